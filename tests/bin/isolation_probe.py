"""A hostile step: tries what its JSON argument lists and prints what worked.

    isolation_probe.py '{"write": [...], "read": [...], "env": [...], "connect": [host, port],
                         "kill": [pid, ...], "pids": true}'

Prints one line ``PROBE {...}``: for each attempt "ok" or the error, the values of the
environment variables asked for (null when unset), and how many processes it can see.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

spec = json.loads(sys.argv[1])
seen: dict[str, object] = {}


def attempt(action: object) -> str:
    try:
        action()  # type: ignore[operator]
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def write(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write("planted by a step\n")


def read(path: str) -> None:
    if os.path.isdir(path):
        if not os.listdir(path):
            raise FileNotFoundError(f"{path} is empty")
        return
    with open(path, "rb") as f:
        if not f.read():
            raise ValueError(f"{path} is empty")


def connect(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=3) as conn:
        conn.recv(16)


seen["write"] = {p: attempt(lambda p=p: write(p)) for p in spec.get("write", [])}
seen["read"] = {p: attempt(lambda p=p: read(p)) for p in spec.get("read", [])}
seen["env"] = {name: os.environ.get(name) for name in spec.get("env", [])}
if "connect" in spec:
    seen["connect"] = attempt(lambda: connect(*spec["connect"]))
seen["kill"] = {str(pid): attempt(lambda pid=pid: os.kill(pid, signal.SIGKILL))
                for pid in spec.get("kill", [])}
seen["pids"] = len([e for e in os.listdir("/proc") if e.isdigit()])
seen["ppid"] = os.getppid()
print("PROBE " + json.dumps(seen), flush=True)
