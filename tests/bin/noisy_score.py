#!/usr/bin/env python3
"""Stand-in scorer with reproducible noise: the `score: V` line of FILE, plus noise.

Each call reads and bumps a counter in STATE_DIR/counter; call number k adds
`offsets[k % len(offsets)]` and Gaussian noise of standard deviation SIGMA seeded by k,
so a test sees the same "noise" every time.  It appends V (the noiseless value, which
says whose artifact was measured) to STATE_DIR/seen, one a line.

Usage: noisy_score.py FILE STATE_DIR [SIGMA] [OFFSET,OFFSET,...]
"""

import json
import random
import sys
from pathlib import Path

path, state = Path(sys.argv[1]), Path(sys.argv[2])
sigma = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
offsets = [float(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else [0.0]
state.mkdir(parents=True, exist_ok=True)
counter = state / "counter"
k = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(k + 1))
value = None
for line in path.read_text().splitlines():
    key, sep, rest = line.partition(":")
    if sep and key.strip() == "score":
        value = float(rest)
if value is None:
    sys.exit(f"noisy_score.py: no 'score:' line in {path}")
with open(state / "seen", "a") as seen:
    seen.write(f"{value:g}\n")
noise = random.Random(k).gauss(0.0, sigma) if sigma else 0.0
print(json.dumps({"score": value + offsets[k % len(offsets)] + noise, "metrics": {"k": k}}))
