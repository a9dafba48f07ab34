#!/usr/bin/env python3
"""Stand-in runner for the Ray tests: says where it runs, then sleeps.

Usage: node_runner.py MARKER_DIR SECONDS [--kill-worker | --kill-worker-once FLAG]

Writes MARKER_DIR/<run id>.<node>.json ({pid, worker_pid, node, cwd, home}) and prints the
same to stdout.  The worker is the process that started the step's /bin/sh (the Ray
worker on a cluster), or the reaper shim's parent.  --kill-worker SIGKILLs it, as the OOM
killer would.
"""

import json
import os
import signal
import sys
import time


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


markers, seconds = sys.argv[1], float(sys.argv[2])
worker = parent_of(os.getppid())
with open(f"/proc/{worker}/cmdline", "rb") as fh:
    if b"reaper.py" in fh.read():  # an unisolated step's shell runs under the reaper shim
        worker = parent_of(worker)
info = {"pid": os.getpid(), "worker_pid": worker, "node": os.environ.get("LOOPENGINE_TEST_NODE"),
        "cwd": os.getcwd(), "home": os.environ.get("HOME"),
        "sandbox": os.environ.get("LOOPENGINE_SANDBOX")}
name = f"{os.environ['LOOPENGINE_RUN_ID']}.{info['node']}.{os.getpid()}.json"
with open(os.path.join(markers, name + ".tmp"), "w") as fh:
    json.dump(info, fh)
os.replace(os.path.join(markers, name + ".tmp"), os.path.join(markers, name))
print(json.dumps(info), flush=True)
if "--kill-worker" in sys.argv:
    os.kill(worker, signal.SIGKILL)
if "--kill-worker-once" in sys.argv:
    flag = sys.argv[sys.argv.index("--kill-worker-once") + 1]
    if not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(worker, signal.SIGKILL)
time.sleep(seconds)
print("runner done", flush=True)
