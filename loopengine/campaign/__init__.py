"""Campaigns: compositions of the iteration's three stages (batches, loops) and the
candidate refs that keep every candidate reviewable with plain git."""
