#!/usr/bin/env python3
"""Stand-in step that writes MB mebibytes (default 200) to stdout as fast as it can.

Output is lines of 1023 "x" and a newline, so the size is exactly MB * 1048576 bytes.
Usage: flood.py [MB]
"""

import sys

megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 200
block = (b"x" * 1023 + b"\n") * 1024
out = sys.stdout.buffer
for _ in range(megabytes):
    out.write(block)
out.flush()
