#!/usr/bin/env python3
"""Stand-in scorer: reads `key: number` lines from FILE; `score` is the score, the rest
are the metrics.  Prints {"score": ..., "metrics": {...}} as one line.

Usage: score_kv.py FILE
"""

import json
import sys

values: dict[str, float] = {}
with open(sys.argv[1], encoding="utf-8") as fh:
    for line in fh:
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = float(value)
score = values.pop("score")
print(json.dumps({"score": score, "metrics": values}))
