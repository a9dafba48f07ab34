"""Loops (contract section 13): iterations (or batches) of one task until a stop rule holds.

The loop's state lives in ``work/loops/<loop_id>/state.json`` and is written before and
after every iteration: before, with the run ids the iteration is about to use
(``current``); after, with what it did.  ``--resume`` reconciles the two with the
records: an iteration whose record exists (or that recovery turns into a record when a
killed run is cleaned up) is counted once and never run again; one that left no trace
never happened and is run.  What was measured and stored (the baseline) is reused as by
any run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopengine import recovery
from loopengine.campaign.batch import BatchOptions, planned_run_ids, run_batch
from loopengine.engine import Options, run_iteration
from loopengine.errors import Interrupted, LoopError
from loopengine.process import owner_alive
from loopengine.progress import Reporter
from loopengine.results import (
    WORK_DIR,
    iso_utc,
    load_baseline,
    new_run_id,
    read_records,
    run_dir,
    write_atomic,
)
from loopengine.signals import SignalGuard
from loopengine.task import load_task

STOP_FILE = "STOP"
SUMMARY_KEYS = ("loop_id", "task_id", "iterations", "keeps", "discards", "crashes",
                "start_score", "best_score", "stop_reason", "duration_seconds", "run_ids")


class LoopStateError(LoopError):
    crash_kind = "config"


@dataclass(frozen=True)
class Rules:
    """The stop rules; None: no such rule."""

    iterations: int | None = None
    max_seconds: float | None = None
    patience: int | None = None
    target: float | None = None
    max_crashes: int = 3
    candidates: int = 1
    jobs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LoopOptions:
    task_path: str
    repo_root: Path
    rules: Rules = Rules()
    resume: str | None = None
    reporter_for: Callable[[], Reporter] = Reporter
    on_progress: Callable[[dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class LoopOutcome:
    summary: dict[str, Any]
    exit_code: int
    state: dict[str, Any] = field(default_factory=dict)


def loop_dir(root: Path, loop_id: str) -> Path:
    return root / WORK_DIR / "loops" / loop_id


def state_path(root: Path, loop_id: str) -> Path:
    return loop_dir(root, loop_id) / "state.json"


def _save(root: Path, state: dict[str, Any]) -> None:
    write_atomic(state_path(root, state["loop_id"]),
                 (json.dumps(state, indent=2, allow_nan=False) + "\n").encode())


def _load(root: Path, loop_id: str) -> dict[str, Any]:
    if not loop_id or "/" in loop_id or loop_id.startswith("."):
        raise LoopStateError(f"{loop_id!r} is not a loop id")
    path = state_path(root, loop_id)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LoopStateError(f"no loop {loop_id} here ({path} does not exist)") from None
    except (OSError, ValueError) as exc:
        raise LoopStateError(f"{path}: cannot be read: {exc}") from exc


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def _reached(score: float | None, target: float | None, direction: str) -> bool:
    if score is None or target is None:
        return False
    return score >= target if direction == "maximize" else score <= target


# ---------------------------------------------------------------------------


def start_state(opts: LoopOptions) -> dict[str, Any]:
    """A new loop's state, or the resumed one's (with the interrupted iteration settled)."""
    root = opts.repo_root
    if opts.resume is not None:
        state = _load(root, opts.resume)
        if state.get("status") == "running" and _alive(state):
            raise LoopStateError(f"loop {opts.resume} is still running (pid {state['pid']})")
        if state.get("status") == "finished":
            raise LoopStateError(f"loop {opts.resume} has finished "
                                 f"({state.get('stop_reason')}); start a new loop")
        (loop_dir(root, opts.resume) / STOP_FILE).unlink(missing_ok=True)
        _settle_current(root, state)
        state.update(status="running", stop_reason=None, pid=os.getpid(),
                     host=socket.gethostname())
        state["resumes"] = int(state.get("resumes", 0)) + 1
        return state
    task = load_task(opts.task_path, root)
    stored = load_baseline(root, task.id)
    loop_id = new_run_id()
    return {
        # Absolute: --resume may be called from another folder.
        "loop_id": loop_id, "task_id": task.id, "task_path": str(task.path),
        "direction": task.direction, "rules": opts.rules.to_dict(),
        "pid": os.getpid(), "host": socket.gethostname(),
        "started_at": iso_utc(dt.datetime.now(dt.UTC)), "status": "running",
        "stop_reason": None, "iterations": 0, "keeps": 0, "discards": 0, "crashes": 0,
        "crash_streak": 0, "no_keep_streak": 0,
        "start_score": stored.score if stored is not None else None,
        "best_score": stored.score if stored is not None else None,
        "elapsed_seconds": 0.0, "run_ids": [], "current": None, "resumes": 0,
    }


def _alive(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    return pid != os.getpid() and owner_alive(pid, state.get("host"))


def _settle_current(root: Path, state: dict[str, Any]) -> None:
    """The iteration a killed loop was running: counted if it left a record, else not."""
    current = state.get("current")
    if not current:
        return
    # A run killed with SIGKILL gets its record from the recovery of dead runs.
    recovery.clean_leftovers(root, "")
    found = _records(root, state, current["run_ids"])
    if found:
        records = [found[r] for r in current["run_ids"] if r in found]
        _count(state, records)
        # The time the killed iteration took was never saved: its records know it.
        state["elapsed_seconds"] = float(state.get("elapsed_seconds", 0.0)) + max(
            float(r.get("duration_seconds") or 0.0) for r in records)
    state["current"] = None


def _records(root: Path, state: dict[str, Any], run_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for run_id in run_ids:
        with contextlib.suppress(OSError, ValueError):
            found[run_id] = json.loads((run_dir(root, run_id) / "record.json").read_text())
    missing = [r for r in run_ids if r not in found]
    if missing:
        try:
            task = load_task(state["task_path"], root)
            results = root / task.results_path
        except LoopError:
            results = root / "work" / "results.jsonl"
        records, _ = read_records(results)
        for rec in records:
            if rec.get("run_id") in missing:
                found[rec["run_id"]] = rec
    return found


def _count(state: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """One iteration (one run or one batch) into the state."""
    direction = state.get("direction", "maximize")
    state["iterations"] += 1
    statuses = [r.get("status") for r in records]
    for status, key in (("keep", "keeps"), ("discard", "discards"), ("crash", "crashes")):
        state[key] += statuses.count(status)
    state["run_ids"] += [r["run_id"] for r in records if r["run_id"] not in state["run_ids"]]
    kept = [r for r in records if r.get("status") == "keep"]
    state["no_keep_streak"] = 0 if kept else state["no_keep_streak"] + 1
    crashed = bool(records) and all(s == "crash" for s in statuses)
    state["crash_streak"] = state["crash_streak"] + 1 if crashed else 0
    if state.get("start_score") is None and state["iterations"] == 1:
        # Nothing was stored when the loop began: the first iteration's baseline, if
        # it measured one, is where the loop started.
        base = next((r.get("baseline_score") for r in records
                     if r.get("baseline_score") is not None), None)
        state["start_score"] = base
        if state.get("best_score") is None:
            state["best_score"] = base
    for r in kept:
        score = r.get("candidate_score")
        if score is not None and (state["best_score"] is None
                                  or _better(score, state["best_score"], direction)):
            state["best_score"] = score


def _stop_reason(root: Path, state: dict[str, Any], rules: Rules, elapsed: float) -> str | None:
    if (loop_dir(root, state["loop_id"]) / STOP_FILE).exists():
        return "stop_file"
    if state["crash_streak"] >= rules.max_crashes:
        return "max_crashes"
    if rules.target is not None and _reached(state.get("best_score"), rules.target,
                                             state.get("direction", "maximize")):
        return "target"
    if rules.iterations is not None and state["iterations"] >= rules.iterations:
        return "iterations"
    if rules.max_seconds is not None and elapsed >= rules.max_seconds:
        return "max_seconds"
    if rules.patience is not None and state["no_keep_streak"] >= rules.patience:
        return "patience"
    return None


def summary(state: dict[str, Any]) -> dict[str, Any]:
    out = {k: state.get(k) for k in SUMMARY_KEYS if k != "duration_seconds"}
    out["duration_seconds"] = round(float(state.get("elapsed_seconds", 0.0)), 3)
    return {k: out[k] for k in SUMMARY_KEYS}


def run_loop(opts: LoopOptions) -> LoopOutcome:
    root = opts.repo_root
    state = start_state(opts)
    rules = Rules(**state["rules"]) if opts.resume is not None else opts.rules
    segment = time.monotonic()
    prior = float(state.get("elapsed_seconds", 0.0))
    signum: int | None = None

    def elapsed() -> float:
        return prior + time.monotonic() - segment

    with SignalGuard() as guard:
        try:
            _save(root, state)
            while True:
                state["elapsed_seconds"] = elapsed()
                reason = _stop_reason(root, state, rules, elapsed())
                if reason is not None:
                    state["stop_reason"] = reason
                    break
                if opts.on_progress is not None:
                    opts.on_progress(_progress(state, rules, elapsed()))
                code = _iteration(opts, state, rules, guard)
                state["elapsed_seconds"] = elapsed()
                with guard.deferred():
                    _save(root, state)
                if code >= 128:
                    signum = code - 128
                    state["stop_reason"] = "interrupted"
                    break
        except Interrupted as exc:
            signum = exc.signum
            state["stop_reason"] = "interrupted"
        with guard.deferred():
            state["elapsed_seconds"] = elapsed()
            state["status"] = "stopped" if state["stop_reason"] in (
                "interrupted", "stop_file", "max_seconds") else "finished"
            if state.get("current"):
                _settle_current(root, state)
            _save(root, state)
        signum = signum or guard.received
    code = 1 if state["stop_reason"] == "max_crashes" else 0
    if signum is not None:
        code = 128 + signum
    return LoopOutcome(summary(state), code, state)


def _iteration(opts: LoopOptions, state: dict[str, Any], rules: Rules,
               guard: SignalGuard) -> int:
    """One iteration (or batch); its records counted into the state; its exit status."""
    root = opts.repo_root
    count = max(1, rules.candidates)
    run_ids = planned_run_ids(count)
    with guard.deferred():
        state["current"] = {"run_ids": run_ids, "started": time.time()}
        _save(root, state)
    reporter = opts.reporter_for()
    try:
        if count > 1:
            outcome = run_batch(BatchOptions(
                task_path=state["task_path"], repo_root=root, candidates=count,
                jobs=rules.jobs, reporter=reporter, run_ids=tuple(run_ids)))
            records, code = [r.to_dict() for r in outcome.records], outcome.exit_code
        else:
            single = run_iteration(Options(task_path=state["task_path"], repo_root=root,
                                           reporter=reporter, run_id=run_ids[0]))
            records, code = [single.record.to_dict()], single.exit_code
    finally:
        reporter.close()
    with guard.deferred():
        _count(state, records)
        state["current"] = None
    return code


def _progress(state: dict[str, Any], rules: Rules, elapsed: float) -> dict[str, Any]:
    left = None if rules.max_seconds is None else max(0.0, rules.max_seconds - elapsed)
    return {"iteration": state["iterations"] + 1, "iterations": rules.iterations,
            "best_score": state.get("best_score"), "keeps": state["keeps"],
            "time_left": left}
