"""Small checks shared by the tests/test_hardening_*.py files (issue 3)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import Repo, Result

EXIT = {"keep": 0, "discard": 0, "crash": 1}


def checked(repo: Repo, result: Result) -> dict[str, Any]:
    """The one record on stdout; record.json and one results line agree; the exit code fits."""
    rec = result.record
    saved = json.loads((repo.path / "work" / "runs" / rec["run_id"] / "record.json").read_text())
    assert saved == rec
    assert [r for r in repo.results() if r["run_id"] == rec["run_id"]] == [rec]
    assert result.code == EXIT[rec["status"]], result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return rec


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def all_dead(pids: list[int], within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)
