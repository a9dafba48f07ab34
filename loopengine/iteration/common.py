"""What the three stages share: their frozen records, the exceptions that end an
iteration, the step runner, and the ledger that becomes the result record."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopengine import decide as decide_mod
from loopengine import diff as diff_mod
from loopengine import (
    git,
    isolation,
    journal,
    pool,
    recovery,
    sandbox,
    score,
    stats,
    tripwire,
)
from loopengine import measure as measure_mod
from loopengine.errors import LoopError
from loopengine.process import StepResult, log_tail, run_step, step_env
from loopengine.progress import Reporter
from loopengine.results import Baseline, Record, iso_utc, new_run_id, run_dir
from loopengine.signals import SignalGuard
from loopengine.task import Step, Task


class StepCrash(LoopError):
    """A step or check failed: ends the iteration as a ``crash`` record."""

    def __init__(self, kind: str, reason: str, tail: str | None = None) -> None:
        super().__init__(reason)
        self.crash_kind = kind
        self.tail = tail


class Verdict(Exception):
    """Ends the iteration early with a decision (a discard by a rule)."""

    def __init__(self, decision: decide_mod.Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


# ---------------------------------------------------------------------------
# The stages' records


@dataclass(frozen=True)
class Candidate:
    """What ``prepare`` hands on: a validated candidate, frozen in its sandbox."""

    run_id: str
    task: Task
    sandbox: sandbox.Sandbox
    start_commit: str | None  # the commit the sandbox started from (None: no commit yet)
    tree: str  # the candidate's tree object (the sandbox as validated)
    stats: diff_mod.DiffStats
    frozen: dict[str, str]  # the artifacts' state in the sandbox when validated
    start_state: dict[str, str]  # the main tree's artifacts when the iteration began
    stored: Baseline | None  # the stored baseline when the iteration began
    baseline: Baseline | None  # ``stored`` when it is comparable (same artifacts)
    fingerprint: str | None
    plan: measure_mod.Plan

    @property
    def has_change(self) -> bool:
        return bool(self.stats.files)


@dataclass(frozen=True)
class EvalRequest:
    """All that ``evaluate`` needs, as data: small, frozen, picklable.

    ``tree`` is the candidate's tree and ``changes`` what turns the baseline into it, so
    a worker with the repository's objects can lay out either side.
    """

    run_id: str
    task: Task
    start_tree: str
    tree: str
    commit: str | None  # the candidate's commit (its ref), when it was saved
    changes: tuple[diff_mod.FileChange, ...]
    frozen: dict[str, str]
    plan: measure_mod.Plan
    seconds_left: float  # what is left of budget.max_seconds when it is sent
    noise: stats.Pool = field(default_factory=stats.Pool)  # earlier runs, this fingerprint


@dataclass(frozen=True)
class Crash:
    kind: str
    reason: str
    tail: str | None = None
    message: str | None = None  # one line for stderr, for crashes the user must fix


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` returns: the measurements, and how they ended."""

    measured: measure_mod.Measurement
    stop: decide_mod.Decision | None = None  # a discard found while measuring
    crash: Crash | None = None

    @property
    def score(self) -> float | None:
        return self.measured.score

    @property
    def metrics(self) -> dict[str, Any]:
        return self.measured.metrics


# ---------------------------------------------------------------------------
# Running one step


MAX_STDOUT = 4 << 20  # bytes of a captured step's stdout (the scorer's) that are parsed


class Steps:
    """Runs the task's steps in one sandbox: budget, environment, logs, checks."""

    def __init__(self, task: Task, sb: sandbox.Sandbox, run_id: str, log_dir: Path, *,
                 deadline: float, report: Reporter, repo: git.RepoInfo | None = None,
                 guard: SignalGuard | None = None, env: Mapping[str, str] | None = None,
                 ) -> None:
        self.task, self.sb, self.run_id, self.log_dir = task, sb, run_id, log_dir
        self.env = dict(env or {})  # more variables for every step (LOOPENGINE_CANDIDATE)
        self.deadline, self.report, self.repo, self.guard = deadline, report, repo, guard
        self.tripwire: tripwire.Tripwire | None = None
        # Changes to the main repository while a step ran that were not the step's.
        self.left: list[str] = []

    def run(self, name: str, step: Step, capture: bool = False) -> str:
        """Run one step in the sandbox; a crash when it fails; stdout when captured."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise StepCrash("budget", f"budget.max_seconds ({self.task.max_seconds:g}s) was "
                            f"used up before the {name} could start")
        cwd = self.sb.tree / step.cwd
        if not cwd.is_dir():
            raise StepCrash("config", f"{name}.cwd: {step.cwd!r} does not exist in the sandbox")
        timeout = min(step.timeout_seconds, remaining)
        log = self.log_dir / f"{name}.log"
        out = self.log_dir / f"{name}.stdout" if capture else None
        env = step_env(os.environ, {
            "LOOPENGINE_SANDBOX": str(self.sb.tree),
            "LOOPENGINE_TASK_DIR": str(self.sb.tree / self.task.task_dir),
            "LOOPENGINE_RUN_ID": self.run_id,
            # Marks the reflog entries of what a step does to the main repository.
            **tripwire.step_env(self.run_id),
            **sandbox.venv_env(self.sb.tree, self.repo.root if self.repo else None),
            **self.env,
        })
        # An isolated step cannot reach the main repository: nothing to watch or repair.
        isolated = isolation.resolve(step.isolation) is not None
        root = self.repo.root if self.repo else self.task.repo_root
        places = isolation.Places(tree=self.sb.tree, main_tree=root,
                                  git_dir=self.repo.common_dir if self.repo else None)
        self.report.step_started(name)
        before = None if isolated else self.watch_main_repo()
        try:
            result = run_step(name, step.command, cwd=cwd, env=env, timeout=timeout,
                              log_path=log, stdout_path=out,
                              on_line=self.report.line_callback(name),
                              isolation=step.isolation, places=places)
        finally:
            touched = self.restore_main_repo(before)
        if self.tripwire is not None and self.tripwire.left:
            self.left += self.tripwire.left
            for what in self.tripwire.left:
                self.report.info(f"while the {name} ran: {what}")
        self.report.step_finished(name, result)
        if touched:
            raise StepCrash(name, f"the {name} changed the main repository's git state, which "
                            f"was put back: {'; '.join(touched)}", log_tail(log))
        self.check_step(name, step, result, timeout)
        if out is None:
            return ""
        size = out.stat().st_size
        if size > MAX_STDOUT:
            # A score is one small JSON object: its size is a limit, never a load.
            raise StepCrash(name, f"the {name}'s output is not one JSON object: it is {size} "
                            f"bytes, more than the {MAX_STDOUT >> 20} MB a score and its "
                            "metrics may take", log_tail(log))
        return out.read_bytes().decode("utf-8", "replace")

    def watch_main_repo(self) -> tripwire.Snapshot | None:
        """What a step could change in the shared ``.git`` by its absolute path."""
        if self.repo is None or not self.repo.is_git:
            return None
        if self.tripwire is None:
            self.tripwire = tripwire.Tripwire(self.repo, self.run_id)
        snapshot = self.tripwire.take()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        tripwire.save(snapshot, self.log_dir / tripwire.SNAPSHOT)
        return snapshot

    def restore_main_repo(self, before: tripwire.Snapshot | None) -> list[str]:
        if before is None or self.tripwire is None:
            return []
        if self.guard is None:
            touched = self.tripwire.restore(before)
        else:
            with self.guard.deferred():  # a ^C must not stop the repair half-way
                touched = self.tripwire.restore(before)
        (self.log_dir / tripwire.SNAPSHOT).unlink(missing_ok=True)
        return touched

    def check_step(self, name: str, step: Step, result: StepResult, timeout: float) -> None:
        if result.timed_out:
            tail = log_tail(result.log_path)
            if timeout < step.timeout_seconds:
                raise StepCrash("budget", f"{name} was stopped after {timeout:.3g}s: "
                                f"budget.max_seconds ({self.task.max_seconds:g}s) ran out", tail)
            raise StepCrash("timeout", f"{name} timed out after {step.timeout_seconds:g}s "
                            f"({name}.timeout_seconds)", tail)
        if result.exit_code != 0:
            code = result.exit_code
            how = f"was killed by signal {-code}" if code is not None and code < 0 else \
                f"exited with status {code}"
            raise StepCrash(name, f"{name} {how}", log_tail(result.log_path))

    def parse_score(self, stdout: str) -> tuple[float, dict[str, Any]]:
        try:
            return score.parse_output(stdout, self.task.parse)
        except score.ScoreError as exc:
            raise StepCrash("scorer", str(exc), log_tail(self.log_dir / "scorer.log")) from exc


# ---------------------------------------------------------------------------
# The ledger: what one run knows so far, and the record it becomes


class Ledger:
    """One run's services and everything known about it so far.

    The stages fill it in as they go, so that an iteration that ends early (a crash, a
    discard by a rule, a signal) still writes a record with all that was known.
    """

    def __init__(self, root: Path, report: Reporter, *, run_id: str | None = None,
                 batch_id: str | None = None) -> None:
        self.root = root
        self.report = report
        self.started = dt.datetime.now(dt.UTC)
        self.t0 = time.monotonic()
        self.run_id = run_id or new_run_id(self.started)
        self.run_dir = run_dir(root, self.run_id)
        self.batch_id = batch_id
        self.guard: SignalGuard | None = None
        self.task: Task | None = None
        self.repo: git.RepoInfo | None = None
        self.sb: sandbox.Sandbox | None = None
        self.reserved: pool.Reservation | None = None
        self.steps: Steps | None = None
        self.deadline = self.t0
        self.stats: diff_mod.DiffStats = diff_mod.EMPTY
        self.validated = False  # the candidate's diff was read: it gets a ref
        self.decision: decide_mod.Decision | None = None
        self.score: float | None = None
        self.metrics: dict[str, Any] = {}
        self.baseline: Baseline | None = None
        self.stored: Baseline | None = None
        self.start_state: dict[str, str] = {}
        self.commit: str | None = None
        self.ref: str | None = None
        self.tail: str | None = None
        self.message: str | None = None
        self.internal_traceback: str | None = None
        # On every record: lines of the user's own that a keep commit carried.
        self.extra: dict[str, Any] = {"uncommitted_lines": 0,
                                      "uncommitted_files": []}
        # Where the measurements ran (section 14): the task's executor, and the node.
        self.extra.update(executor=None, node=None)
        self.uncommitted = ""
        self.frozen: dict[str, str] = {}
        self.fingerprint: str | None = None
        self.plan: measure_mod.Plan | None = None
        self.measured: measure_mod.Measurement | None = None
        self.candidate: Candidate | None = None
        self.journal = journal.Journal(self.run_dir)
        self.alive = recovery.Alive(root, self.run_id)
        self.committed = False  # past the keep's commit point: the record says keep
        self.patched = False  # the candidate is a --patch: no mutator runs
        self.unfinished: str | None = None  # a keep past its commit point, not finished

    def crash(self, kind: str, reason: str, tail: str | None = None) -> None:
        if self.commit is not None or self.committed:
            return  # the keep is committed: that is the truth, whatever came after
        self.decision = decide_mod.Decision("crash", reason, crash_kind=kind)
        self.tail = tail

    def build_record(self) -> Record:
        decision = self.decision or decide_mod.Decision("crash", "no decision was reached",
                                                        crash_kind="internal")
        task = self.task
        patch = self.run_dir / "candidate.patch"
        return Record(
            task_id=task.id if task else None,
            status=decision.status,
            reason=decision.reason or decision.status,
            candidate_score=self.score,
            diff_summary=self.stats.summary,
            run_id=self.run_id,
            baseline_score=self.baseline.score if self.baseline else None,
            metrics=self.metrics,
            changed_files=self.stats.changed_files,
            changed_lines=self.stats.changed_lines,
            patch=patch.relative_to(self.root).as_posix() if patch.exists() else None,
            commit=self.commit,
            sandbox=self.sb.kind if self.sb else ("worktree" if self.repo and self.repo.head
                                                  else "copy"),
            started_at=iso_utc(self.started),
            duration_seconds=round(time.monotonic() - self.t0, 3),
            crash_kind=decision.crash_kind if decision.status == "crash" else None,
            violations=decision.violations,
            log_tail=self.tail if decision.status == "crash" else None,
            extra={**measure_mod.record_fields(task, self.measured, self.plan, self.fingerprint,
                                               self.baseline),
                   "ref": self.ref,
                   "batch_id": self.batch_id,
                   "left_alone": list(self.steps.left) if self.steps else [],
                   "isolation": isolation.task_mode(task, mutator=not self.patched)
                   if task else "none",
                   **self.extra},
        )


@dataclass(frozen=True)
class Outcome:
    record: Record
    exit_code: int
    message: str | None = None  # one line for stderr, for crashes the user must fix

