#!/usr/bin/env python3
"""Stand-in step that ignores SIGTERM and SIGINT: only SIGKILL stops it.

Usage: ignore_term.py [PIDFILE]   (writes its pid there first, then prints "ready")
"""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
if len(sys.argv) > 1:
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
print("ready", flush=True)
while True:
    time.sleep(3600)
