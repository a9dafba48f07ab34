"""SIGINT and SIGTERM sent to a running `loopengine run`: a crash record, nothing left behind."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, PY, Repo, Result, assert_guarantees, default_task, snapshot
from contract_checks import (
    all_dead,
    check_fields,
    finish_run,
    no_leftovers,
    read_pid,
    results_lines,
    start_run,
    wait_for,
)


def use(repo: Repo, **overrides: object) -> None:
    # The steps write host pids and markers for the test to read: unisolated (bwrap's own
    # PID namespace and throwaway /tmp are tests/test_isolation.py's).
    repo.write_task(default_task(**{"isolation": {"mode": "none"}, **overrides}))
    repo.commit("task")


def interrupted(repo: Repo, result: Result, signum: int, sandboxes: Path) -> dict:
    """Exit 128+n, one crash record on stdout and in results.jsonl, no leftovers."""
    assert result.code == 128 + signum, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    rec = result.record
    check_fields(rec)
    assert rec["status"] == "crash" and rec["crash_kind"] == "interrupted"
    assert rec["reason"] == f"interrupted by {signal.Signals(signum).name}"
    assert rec["commit"] is None and rec["candidate_score"] is None
    assert [r for r in results_lines(repo) if r["run_id"] == rec["run_id"]] == [rec]
    no_leftovers(repo, sandboxes)
    return rec


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_the_mutator(repo: Repo, procs, isolated_env: Path, tmp_path: Path,
                                   signum: int) -> None:
    pidfile = tmp_path / "step.pid"
    use(repo, mutator__command=f"{PY} {BIN}/ignore_term.py {pidfile}")
    before = snapshot(repo, isolated_env)
    proc = start_run(repo, procs)
    wait_for(pidfile, proc)
    assert len(os.listdir(isolated_env)) == 1  # the sandbox exists while the step runs
    proc.send_signal(signum)
    result = finish_run(proc)
    rec = interrupted(repo, result, signum, isolated_env)
    assert all_dead([read_pid(pidfile)])
    assert_guarantees(repo, before, isolated_env, rec)
    assert repo.read("tasks/demo/notes.md") == "first\n"


def test_sigterm_during_the_runner_kills_a_detached_grandchild(
        repo: Repo, procs, isolated_env: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "detached.pid"
    use(repo, runner__command=f"sh {BIN}/detach_and_wait.sh {pidfile}")
    before = snapshot(repo, isolated_env)
    proc = start_run(repo, procs)
    wait_for(pidfile, proc)
    proc.send_signal(signal.SIGTERM)
    rec = interrupted(repo, finish_run(proc), signal.SIGTERM, isolated_env)
    assert all_dead([read_pid(pidfile)])
    assert_guarantees(repo, before, isolated_env, rec)
    # the mutator had run in the sandbox; its change never reached the main tree
    assert repo.read("tasks/demo/notes.md") == "first\n"


def test_sigint_during_the_scorer(repo: Repo, procs, isolated_env: Path,
                                  tmp_path: Path) -> None:
    pidfile = tmp_path / "scorer.pid"
    use(repo, scorer__command=f"echo '{{\"score\": 1}}'; {PY} {BIN}/ignore_term.py {pidfile}")
    before = snapshot(repo, isolated_env)
    proc = start_run(repo, procs)
    wait_for(pidfile, proc)
    proc.send_signal(signal.SIGINT)
    rec = interrupted(repo, finish_run(proc), signal.SIGINT, isolated_env)
    assert all_dead([read_pid(pidfile)])
    assert_guarantees(repo, before, isolated_env, rec)


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_more_signals_during_cleanup_still_clean_up(repo: Repo, procs, isolated_env: Path,
                                                   tmp_path: Path, second: int) -> None:
    # Many files in the sandbox make its removal take a while; signals keep arriving
    # every few milliseconds until the run has exited.
    pidfile = tmp_path / "step.pid"
    use(repo, mutator__command=(
        f"mkdir junk && cd junk && seq 1 1000 | xargs touch && cd .. && "
        f"{PY} {BIN}/ignore_term.py {pidfile}"))
    before = snapshot(repo, isolated_env)
    proc = start_run(repo, procs)
    wait_for(pidfile, proc)
    proc.send_signal(signal.SIGINT)
    sent = 1
    while proc.poll() is None:
        time.sleep(0.003)
        try:
            proc.send_signal(second)
            sent += 1
        except ProcessLookupError:
            break
    assert sent > 2
    rec = interrupted(repo, finish_run(proc), signal.SIGINT, isolated_env)
    assert all_dead([read_pid(pidfile)])
    assert_guarantees(repo, before, isolated_env, rec)


def wait_for_lock_waiter(lock: Path, proc: subprocess.Popen[str]) -> None:
    """Until a process blocks on ``lock`` (``/proc/locks`` marks waiters with ``->``)."""
    inode = f":{os.stat(lock).st_ino}"
    deadline = time.monotonic() + 30
    while True:
        with open("/proc/locks") as fh:
            if any("->" in line and any(f.endswith(inode) for f in line.split())
                   for line in fh):
                return
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)


def test_signal_while_the_keep_is_being_made_keeps_and_exits_143(
        repo: Repo, procs, isolated_env: Path, tmp_path: Path) -> None:
    # Hold the engine's decide-and-sync lock so that the run waits inside the keep;
    # a signal arriving there is noted, the keep completes, and the record says so.
    scored = tmp_path / "scored"
    use(repo, scorer__command=f"echo 1 > {scored}; {PY} {BIN}/score_lines.py notes.md")
    before = snapshot(repo, isolated_env)
    lock = repo.path / "work" / ".loopengine.lock"
    lock.parent.mkdir()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = start_run(repo, procs)
        wait_for(scored, proc)
        wait_for_lock_waiter(lock, proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        os.close(fd)
    result = finish_run(proc)
    assert result.code == 143, result.stderr
    rec = result.record
    check_fields(rec)
    assert rec["status"] == "keep" and rec["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert [r for r in results_lines(repo) if r["run_id"] == rec["run_id"]] == [rec]
    assert_guarantees(repo, before, isolated_env, rec)
    no_leftovers(repo, isolated_env)


def many_files(repo: Repo, n: int = 1000) -> None:
    """Enough files that `git worktree add` takes a while."""
    for i in range(n):
        repo.write(f"data/d{i % 30}/f{i}.txt", f"{i}\n")
    repo.commit("many files")


def wait_for_worktree_entry(repo: Repo, proc: subprocess.Popen[str]) -> None:
    admin = repo.path / ".git" / "worktrees"
    deadline = time.monotonic() + 20
    while not (admin.exists() and os.listdir(admin)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.002)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_sandbox_is_made(repo: Repo, procs, isolated_env: Path,
                                          signum: int) -> None:
    many_files(repo)
    before = snapshot(repo, isolated_env)
    proc = start_run(repo, procs)
    wait_for_worktree_entry(repo, proc)  # `git worktree add` is under way
    proc.send_signal(signum)
    rec = interrupted(repo, finish_run(proc), signum, isolated_env)
    assert not list((repo.path / "work" / "runs" / rec["run_id"]).glob("*.log"))
    assert_guarantees(repo, before, isolated_env, rec)
