#!/usr/bin/env python3
"""Stand-in mutator: append each argument after the first as a line to the file argv[1]."""

import sys

with open(sys.argv[1], "a", encoding="utf-8") as fh:
    for line in sys.argv[2:]:
        fh.write(line + "\n")
