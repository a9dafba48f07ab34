#!/usr/bin/env python3
"""Stand-in scorer: prints {"score": SCORE, "metrics": {...}} as one line on stdout.

SCORE is inserted verbatim as JSON text, so hostile scores are easy to make:
`1e400`, `NaN`, `true`, `'"high"'`.  Each KEY=VALUE becomes a metric; VALUE must be a
number.

Usage: print_score.py SCORE [KEY=VALUE ...]
"""

import json
import sys


def number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


if len(sys.argv) < 2:
    sys.exit("usage: print_score.py SCORE [KEY=VALUE ...]")
metrics: dict[str, int | float] = {}
for arg in sys.argv[2:]:
    key, sep, value = arg.partition("=")
    try:
        if not sep or not key:
            raise ValueError(arg)
        metrics[key] = number(value)
    except ValueError:
        sys.exit(f"print_score.py: not KEY=NUMBER: {arg!r}")
print(f'{{"score": {sys.argv[1]}, "metrics": {json.dumps(metrics)}}}', flush=True)
