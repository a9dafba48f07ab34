"""``loopengine report``: one self-contained HTML page of a repository's campaigns.

``data`` turns the records into one :class:`~loopengine.report.data.Campaign` per task,
``chart`` draws its score per run with matplotlib (SVG, inline), ``page`` lays out the
HTML.  The page needs no network: no script, no font, no stylesheet is fetched.
"""

from __future__ import annotations

from loopengine.report.build import DEFAULT_OUT, build, write_report

__all__ = ["DEFAULT_OUT", "build", "write_report"]
