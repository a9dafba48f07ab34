"""A process that tries to outlive its step: it drops the engine's variables, detaches,
and keeps changing its pid (fork, the parent exits, in a loop).

    pid_hopper.py MARKER [HEARTBEAT_FILE]

MARKER stays in the command line of every hop, so a test can look for survivors.
"""

from __future__ import annotations

import os
import sys
import time

marker = sys.argv[1]
heartbeat = sys.argv[2] if len(sys.argv) > 2 else None
if "LOOPENGINE_STEP_TOKEN" in os.environ or "LOOPENGINE_RUN_ID" in os.environ:
    # No token for a /proc scan to find.
    os.execve(sys.executable, [sys.executable, *sys.argv], {"PATH": "/usr/bin:/bin"})
if os.fork():
    os._exit(0)
os.setsid()
while True:
    if os.fork():
        os._exit(0)
    if heartbeat:
        with open(heartbeat, "w") as f:
            f.write(f"{os.getpid()} {time.time()}\n")
    time.sleep(0.002)
