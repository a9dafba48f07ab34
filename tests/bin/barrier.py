#!/usr/bin/env python3
"""Stand-in mutator: record the sandbox in folder argv[1], wait until argv[2] runs have."""

import os
import sys
import time

folder, count = sys.argv[1], int(sys.argv[2])
with open(os.path.join(folder, os.environ["LOOPENGINE_RUN_ID"]), "w") as fh:
    fh.write(os.environ["LOOPENGINE_SANDBOX"])
deadline = time.monotonic() + 60
while len(os.listdir(folder)) < count:
    if time.monotonic() > deadline:
        sys.exit("the other runs never arrived")
    time.sleep(0.02)
