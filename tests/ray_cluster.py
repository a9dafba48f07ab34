"""A real Ray cluster on this machine: a head and worker nodes, each its own process group.

Each node is ``ray start --block`` in a new session, so the node is exactly one process
group: killing the group is a node dying (no ``ray stop``, which would stop every Ray on
the machine).  Nodes get their own HOME, working directory and sandbox root, none of them
the repository's, so a test can see that a worker needs nothing of the caller's machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
READY = "This command will now block forever"
STARTED_TIMEOUT = 120.0
# Small: the whole cluster must fit a CI runner next to the tests.
OBJECT_STORE_BYTES = 100 * 1024 * 1024
# A dead node is noticed in seconds, not Ray's default half a minute.
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                 "health_check_initial_delay_ms": 500, "health_check_timeout_ms": 500}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """The node dies at once, as a machine losing power: every process of the group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        # Whatever of the group is left (workers the raylet started) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class LocalCluster:
    """``with LocalCluster() as c: c.add_worker()``; ``c.address`` for executor.address."""

    def __init__(self, num_cpus: int = 1) -> None:
        # Short: Ray's unix sockets live below it and must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="lr-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.num_cpus = num_cpus
        self.nodes: list[Node] = []

    def __enter__(self) -> LocalCluster:
        try:
            self.start_head()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, name: str, args: list[str]) -> Node:
        home = self.root / name
        (home / "sandboxes").mkdir(parents=True)
        log = self.root / f"{name}.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "LOOPENGINE_", "GIT_"))}
        env.update(HOME=str(home), LOOPENGINE_SANDBOX_ROOT=str(home / "sandboxes"),
                   LOOPENGINE_TEST_NODE=name, RAY_USAGE_STATS_ENABLED="0")
        # Every port of its own: other clusters may run on this machine (other test runs),
        # and Ray's defaults (dashboard agent 52365, client 10001, ...) would collide.
        ports = [f"--{name}={free_port()}" for name in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [RAY, "start", "--block", f"--num-cpus={self.num_cpus}",
                 f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats",
                 *ports, *args],
                cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, proc, home, log)
        self.nodes.append(node)
        deadline = time.monotonic() + STARTED_TIMEOUT
        while READY not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        return node

    def start_head(self) -> Node:
        return self._start("head", [
            "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
            "--include-dashboard=false", f"--temp-dir={self.root / 'ray'}",
            f"--dashboard-port={free_port()}",
            f"--system-config={json.dumps(SYSTEM_CONFIG)}"])

    def add_worker(self, name: str | None = None) -> Node:
        name = name or f"worker{sum(1 for n in self.nodes if n.name != 'head') + 1}"
        while (self.root / name).exists():  # a node that died leaves its folder
            name += "x"
        return self._start(name, [f"--address={self.address}", "--node-ip-address=127.0.0.1"])

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
