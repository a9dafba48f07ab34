"""Issue 3, point 5: no process outlives its step, and no step holds the engine's locks.

Detached children of a step are found by the token in their environment (after a step
that succeeded, and on timeout: test_crashes.py); those of a run killed with SIGKILL by
its ``LOOPENGINE_RUN_ID``, which the next run looks for.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from conftest import BIN, PY, Repo, default_task
from hardening_checks import alive, all_dead, checked, wait_for

from loopengine.process import kill_tagged


def test_no_step_inherits_a_lock_descriptor(repo: Repo, guarded, tmp_path: Path) -> None:
    fds = {step: tmp_path / f"{step}.fds" for step in ("mutator", "runner")}
    repo.write_task(default_task(isolation={"write": [str(tmp_path)]},
        mutator__command=f"ls -l /proc/self/fd > {fds['mutator']}; "
                         f"{PY} {BIN}/append_line.py notes.md more",
        runner__command=f"ls -l /proc/self/fd > {fds['runner']}"))
    repo.commit("task")
    assert checked(repo, guarded())["status"] == "keep"
    for listing in fds.values():
        text = listing.read_text()
        assert "/proc/" in text  # ls's own descriptor: the listing is real
        targets = [line.split(" -> ")[1] for line in text.splitlines() if " -> " in line]
        assert not [t for t in targets if t.endswith(".lock")], text
        assert len(targets) == 4, text  # stdin, stdout, stderr and ls's own /proc listing


def test_the_steps_of_a_run_killed_with_sigkill_are_killed_by_the_next_run(
        repo: Repo, tmp_path: Path) -> None:
    pidfile = tmp_path / "detached.pid"
    repo.write_task(default_task(isolation={"mode": "none"},
        runner__command=f"sh {BIN}/detach_child.sh {shlex.quote(str(pidfile))} --wait"))
    repo.commit("a runner that detaches a child and waits")
    engine = subprocess.Popen([PY, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml"],
                              cwd=repo.path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(pidfile)
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.wait()
    detached = int(pidfile.read_text().split()[0])
    assert alive(detached)  # in its own session: SIGKILL of the engine does not reach it
    nxt = checked(repo, repo.run(task="tasks/missing.yaml"))
    assert nxt["status"] == "crash"
    assert all_dead([detached])
    lost = [r for r in repo.results() if r["run_id"] != nxt["run_id"]]
    assert [(r["status"], r["crash_kind"]) for r in lost] == [("crash", "interrupted")]


def test_kill_tagged_takes_the_variable_name() -> None:
    env = {**os.environ, "LOOPENGINE_RUN_ID": "the-dead-run"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env,
                            start_new_session=True)
    try:
        assert kill_tagged("another-run", var="LOOPENGINE_RUN_ID") == 0
        assert kill_tagged("the-dead-run", var="LOOPENGINE_RUN_ID") == 1
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
