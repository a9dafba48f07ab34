"""Checks of what a user sees, shared by the crash, config, signal and concurrency tests."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import PY, Repo, Result

CRASH_KINDS = {"config", "sandbox", "mutator", "runner", "scorer", "timeout", "budget",
               "interrupted", "internal"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional(value: object, check: Any) -> bool:
    return value is None or check(value)


# field -> a check of its type, as the contract's section 4 gives it
FIELDS: dict[str, Any] = {
    "task_id": lambda v: _optional(v, lambda x: isinstance(x, str)),
    "status": lambda v: v in ("keep", "discard", "crash"),
    "reason": lambda v: isinstance(v, str) and v.strip() != "",
    "candidate_score": lambda v: _optional(v, _number),
    "diff_summary": lambda v: isinstance(v, str),
    "run_id": lambda v: isinstance(v, str) and v != "",
    "baseline_score": lambda v: _optional(v, _number),
    "metrics": lambda v: isinstance(v, dict),
    "changed_files": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v)
    and v == sorted(v),
    "changed_lines": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "patch": lambda v: _optional(v, lambda x: isinstance(x, str)),
    "commit": lambda v: _optional(v, lambda x: isinstance(x, str) and len(x) == 40),
    "sandbox": lambda v: v in ("worktree", "copy"),
    "started_at": lambda v: isinstance(v, str) and _iso_utc(v),
    "duration_seconds": lambda v: _number(v) and v >= 0,
    "crash_kind": lambda v: _optional(v, lambda x: x in CRASH_KINDS),
    "violations": lambda v: isinstance(v, list),
    "log_tail": lambda v: _optional(v, lambda x: isinstance(x, str)),
}


def _iso_utc(text: str) -> bool:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.utcoffset() == dt.timedelta(0)


def check_fields(rec: dict[str, Any]) -> None:
    """Every contract field is present with its type; crash fields only on a crash."""
    missing = set(FIELDS) - set(rec)
    assert not missing, f"record lacks {missing}: {rec}"
    bad = {name: rec[name] for name, ok in FIELDS.items() if not ok(rec[name])}
    assert not bad, f"fields of the wrong type: {bad}"
    if rec["status"] == "crash":
        assert rec["crash_kind"] in CRASH_KINDS
        assert rec["commit"] is None
    else:
        assert rec["crash_kind"] is None and rec["log_tail"] is None


def check_record(repo: Repo, result: Result, results: str = "work/results.jsonl") -> dict[str, Any]:
    """stdout is one JSON line; record.json and exactly one results line say the same."""
    rec = result.record
    check_fields(rec)
    saved = json.loads((repo.path / "work" / "runs" / rec["run_id"] / "record.json").read_text())
    assert saved == rec
    lines = [r for r in results_lines(repo, results) if r.get("run_id") == rec["run_id"]]
    assert lines == [rec]
    expected = {"keep": 0, "discard": 0, "crash": 1}[rec["status"]]
    assert result.code == expected, result.stderr
    return rec


def results_lines(repo: Repo, results: str = "work/results.jsonl") -> list[dict[str, Any]]:
    """The whole JSON objects in a results file, skipping damaged lines."""
    path = repo.path / results
    found = []
    for line in path.read_bytes().splitlines() if path.exists() else []:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            found.append(item)
    return found


def stderr_line(result: Result) -> str:
    """stderr is exactly one line, without a traceback; returns it."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {result.stderr!r}"
    return lines[0]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def all_dead(pids: list[int], within: float = 2.0) -> bool:
    """The processes are gone, allowing the kernel a moment to finish tearing them down."""
    deadline = time.monotonic() + within
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def wait_for(path: Path, proc: subprocess.Popen[str] | None = None,
             timeout: float = 30.0) -> None:
    """Wait until a step has written ``path``; fail at once if the run ends first."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before {path} appeared: {out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


def worktrees(repo: Repo) -> list[str]:
    return [line.split(" ", 1)[1] for line in
            repo.git("worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def no_leftovers(repo: Repo, sandboxes: Path) -> None:
    """No sandbox folder, no worktree entry but the main tree, no active-run marker."""
    assert os.listdir(sandboxes) == []
    assert worktrees(repo) == [str(repo.path)]
    admin = repo.path / ".git" / "worktrees"
    left = {e.name: sorted(os.listdir(e)) for e in admin.iterdir()} if admin.exists() else {}
    assert left == {}, f"worktree entries left: {left}"
    active = repo.path / "work" / "runs" / ".active"
    assert not active.exists() or os.listdir(active) == []


def start_run(repo: Repo, procs: list[subprocess.Popen[str]],
              task: str = "tasks/demo/task.yaml") -> subprocess.Popen[str]:
    """``loopengine run`` in the background; ``procs`` collects it for the test's teardown."""
    proc = subprocess.Popen([PY, "-m", "loopengine", "run", "--task", task], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def finish_run(proc: subprocess.Popen[str], timeout: float = 60) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)
