"""The measurement loop: runner and scorer as often as the policy asks, in one sandbox.

The baseline and the candidate differ only in the artifact files (validation makes sure
of it), so one sandbox measures both: before a baseline measurement the artifacts' start
blobs are written back, before a candidate measurement the candidate's, and after each
measurement the artifacts must still be what was written.  Baseline and candidate
measurements alternate (B C B C ...), so that a drift in the machine hits both alike.

Every measurement is also checked for what the runner and scorer must not do: change a
file of the sandbox's start tree outside the artifacts.  New, untracked outputs are fine.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from loopengine import git, stats, sync
from loopengine.decide import Decision, Look, check_constraints, improvement, judge
from loopengine.diff import FileChange
from loopengine.errors import LoopError
from loopengine.results import Baseline
from loopengine.sandbox import Sandbox
from loopengine.task import Task, match_artifact

BASELINE, CANDIDATE = "baseline", "candidate"
# With repeats, the stored baseline collects up to this many times `repeats` measurements,
# one before each candidate run: a well-measured baseline narrows every later comparison
# at the cost of one run per candidate run, until it is full.
BASELINE_DEPTH = 4
# Another measurement starts only if the budget leaves this multiple of the longest one.
BUDGET_MARGIN = 1.25
_LISTED = 10


# ---------------------------------------------------------------------------
# Which baseline, and why


@dataclass(frozen=True)
class Plan:
    """Where the baseline comes from: ``stored``, ``remeasured`` (in this iteration) or
    ``none``; ``stored`` holds the stored measurements the candidate is held against."""

    source: str
    stored: tuple[float, ...] = ()
    why: str = ""


def plan(task: Task, baseline: Baseline | None, fingerprint: str | None) -> Plan:
    """``baseline`` is the stored one if it was measured on exactly these artifacts."""
    policy = task.policy
    if baseline is None:
        if policy.remeasure_baseline:
            return Plan("remeasured", why="policy.remeasure_baseline")
        return Plan("none")
    if baseline.fingerprint != fingerprint:
        # Never compare across evaluations: the stored score answers another question.
        return Plan("remeasured", why="the stored baseline was measured by another "
                    "evaluation (its fingerprint differs)")
    if policy.remeasure_baseline:
        return Plan("remeasured", why="policy.remeasure_baseline")
    if not baseline.scores and policy.repeats > 1:
        # A kept candidate's own scores are biased upward by the selection that kept it
        # (the winner's curse), so they are never stored as measurements.
        return Plan("remeasured", why="the stored baseline has no measurement of its own "
                    "(it is the score of the keep that made it)")
    return Plan("stored", baseline.scores or (baseline.score,))


# ---------------------------------------------------------------------------
# One measurement


@dataclass(frozen=True)
class Sample:
    score: float
    metrics: dict[str, Any]


class TamperedError(LoopError):
    """The runner or scorer changed a file that defines the evaluation: a ``crash``."""

    def __init__(self, step: str, paths: Sequence[str]) -> None:
        shown = ", ".join(paths[:_LISTED])
        if len(paths) > _LISTED:
            shown += f" and {len(paths) - _LISTED} more"
        super().__init__(
            f"the {step} changed tracked files: {shown}; the runner and scorer must not "
            "change the files that make up the evaluation (write outputs under work/ or "
            "to new, untracked files)"
        )
        self.crash_kind = step
        self.paths = list(paths)


class _ArtifactChanged(Exception):
    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side


class Integrity:
    """Which files of the start tree (artifacts aside) differ from it now.

    ``diff-files`` compares the tree with a private copy of the start index, so only
    paths of the start tree count and an untouched file costs one ``lstat``.  It names
    every file whose stat data changed; only when one of them is not an artifact is the
    index refreshed (content compared) and asked again, so a file that was merely
    touched or rewritten with the same bytes is no change.
    """

    def __init__(self, task: Task, sb: Sandbox) -> None:
        self.task = task
        index = sb.index("integrity")
        shutil.copy2(sb.start_index, index)  # copy2: keep the mtime git's racy check uses
        self.ctx = sb.ctx.with_index(index)

    def changed(self) -> list[str]:
        if not self._listed():
            return []
        git.run(self.ctx, "update-index", "-q", "--refresh", check=False)
        return self._listed()

    def _listed(self) -> list[str]:
        out = git.run(self.ctx, "diff-files", "--name-only", "-z").stdout
        return [p for p in git.split_z(out) if not match_artifact(self.task, p)]

    def check(self, step: str) -> None:
        changed = self.changed()
        if changed:
            raise TamperedError(step, changed)


RunStep = Callable[..., str]  # (name, step, capture=False) -> the step's stdout
ParseScore = Callable[[str], tuple[float, dict[str, Any]]]


class Measures(Protocol):
    """What the loop needs of an :class:`Evaluator` (tests pass a stand-in)."""

    longest: float  # seconds, the longest measurement so far

    def __call__(self, side: str) -> Sample: ...


class Evaluator:
    """Runner and scorer once, on the baseline's or the candidate's artifacts."""

    def __init__(self, task: Task, sb: Sandbox, changes: Sequence[FileChange], run: RunStep,
                 parse: ParseScore, log_dir: Path | None = None,
                 phase: Callable[[str], None] | None = None,
                 current: str = CANDIDATE) -> None:
        self.task, self.sb, self.run, self.parse = task, sb, run, parse
        self.files = {CANDIDATE: list(changes), BASELINE: [_reverse(f) for f in changes]}
        self.current = current  # whose artifacts are in the tree now
        self.integrity = Integrity(task, sb)
        self.log_dir, self.phase = log_dir, phase
        self.count = 0
        self.longest = 0.0

    def lay(self, side: str) -> None:
        if side != self.current:
            sync.write_files(self.sb.tree, self.sb.ctx, self.files[side])
            self.current = side

    def __call__(self, side: str) -> Sample:
        self.lay(side)
        expected = sync.artifact_state(self.sb.tree, self.task)
        self.count += 1
        self.note(f"measurement {self.count}: {side}")
        t0 = time.monotonic()
        self.run("runner", self.task.runner)
        self.integrity.check("runner")
        stdout = self.run("scorer", self.task.scorer, capture=True)
        self.integrity.check("scorer")
        score, metrics = self.parse(stdout)
        if sync.artifact_state(self.sb.tree, self.task) != expected:
            raise _ArtifactChanged(side)
        self.longest = max(self.longest, time.monotonic() - t0)
        return Sample(score, metrics)

    def note(self, text: str) -> None:
        if self.phase is not None:
            self.phase(text)
        if self.log_dir is not None:
            for name in ("runner", "scorer"):
                with open(self.log_dir / f"{name}.log", "a", encoding="utf-8") as log:
                    log.write(f"--- loopengine: {text} ---\n")


def _reverse(f: FileChange) -> FileChange:
    """The change that puts the start blob back."""
    if f.status == "A":
        return replace(f, status="D", old_mode=f.new_mode, new_mode="000000",
                       old_sha=f.new_sha, new_sha="0" * len(f.new_sha))
    return replace(f, status="A" if f.status == "D" else f.status, old_mode=f.new_mode,
                   new_mode=f.old_mode, old_sha=f.new_sha, new_sha=f.old_sha)


# ---------------------------------------------------------------------------
# The loop


@dataclass
class Measurement:
    candidate: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)  # stored ones first, then fresh
    fresh: int = 0  # baseline measurements made in this iteration
    order: list[str] = field(default_factory=list)  # "B" / "C", in the order measured
    metrics: dict[str, Any] = field(default_factory=dict)  # the last candidate's
    baseline_metrics: dict[str, Any] = field(default_factory=dict)  # the last fresh baseline's
    look: Look | None = None
    stop: Decision | None = None  # a discard found while measuring

    @property
    def score(self) -> float | None:
        return stats.mean(self.candidate) if self.candidate else None


def measure(task: Task, evaluate: Measures, how: Plan, m: Measurement, *, has_change: bool,
            time_left: Callable[[], float] = lambda: float("inf")) -> None:
    """Measure into ``m`` until the verdict is clear or ``policy.repeats`` candidate runs
    are done; ``m`` starts with the stored baseline measurements, and keeps what was
    measured when a step fails half-way."""
    try:
        if how.source == "none" or not has_change:
            _measure_alone(task, evaluate, how, m, has_change, time_left)
        else:
            _measure_against(task, evaluate, m, time_left)
    except _ArtifactChanged as exc:
        m.stop = Decision("discard", "an artifact changed after validation (by the runner or "
                          f"scorer, while measuring the {exc.side}); the validated "
                          "candidate is not what was scored")


def _measure_alone(task: Task, evaluate: Measures, how: Plan, m: Measurement,
                   has_change: bool, time_left: Callable[[], float]) -> None:
    """No comparison to make: an unchanged candidate, or no baseline at all."""
    policy = task.policy
    settled = how.source == "stored" and not has_change
    refused = how.source == "none" and has_change and not policy.keep_when_no_baseline
    # What is measured here becomes the baseline: it gets every run the policy allows.
    runs = 1 if settled or refused else policy.repeats
    for i in range(runs):
        # Repeats fill the budget, never overrun it: what was measured in time counts.
        if i and time_left() < BUDGET_MARGIN * evaluate.longest:
            break
        if not _candidate(task, evaluate, m):
            return
    if how.source == "remeasured":  # the unchanged candidate is the baseline
        m.baseline, m.fresh = list(m.candidate), len(m.candidate)
        m.baseline_metrics = m.metrics


def _measure_against(task: Task, evaluate: Measures, m: Measurement,
                     time_left: Callable[[], float]) -> None:
    policy = task.policy
    repeats = policy.repeats
    depth = baseline_depth(repeats)
    for i in range(repeats):
        # The baseline is topped up one run before each candidate run: a remeasured
        # baseline starts empty, so it alternates B C B C.
        with_baseline = len(m.baseline) < depth
        if i and time_left() < BUDGET_MARGIN * evaluate.longest * (1 + with_baseline):
            m.look = _judge(task, m, final=True)  # no room for another: decide now
            return
        if with_baseline:
            sample = evaluate(BASELINE)
            m.baseline.append(sample.score)
            m.baseline_metrics = sample.metrics
            m.fresh += 1
            m.order.append("B")
        if not _candidate(task, evaluate, m):
            return
        m.look = _judge(task, m, final=i == repeats - 1)
        if m.look.state != "more":
            return


def baseline_depth(repeats: int) -> int:
    """How many measurements the baseline is topped up to (one: the defaults, as ever)."""
    return 1 if repeats == 1 else BASELINE_DEPTH * repeats


def _candidate(task: Task, evaluate: Measures, m: Measurement) -> bool:
    """One candidate measurement; False when a constraint already decides."""
    sample = evaluate(CANDIDATE)
    m.candidate.append(sample.score)
    m.order.append("C")
    m.metrics = sample.metrics
    return check_constraints(task.constraints, sample.metrics) is None


def _judge(task: Task, m: Measurement, final: bool) -> Look:
    return judge(m.candidate, m.baseline, direction=task.direction,
                 min_improvement=task.policy.min_improvement,
                 confidence=task.policy.confidence, repeats=task.policy.repeats, final=final)


# ---------------------------------------------------------------------------
# What the iteration leaves behind


def new_baseline(m: Measurement, how: Plan, *, kept: bool,
                 has_change: bool) -> tuple[float, tuple[float, ...]] | None:
    """The score and measurements to store as the baseline, or None to leave the store.

    Its metrics are :func:`new_baseline_metrics`.

    A keep that beat a baseline stores its mean but no measurements (they were selected
    for being high); what was measured without a selection is stored as measurements.
    """
    if not m.candidate:
        return None
    if kept and has_change:
        selected = how.source != "none"
        return stats.mean(m.candidate), () if selected else tuple(m.candidate)
    if not has_change and how.source == "none":
        return stats.mean(m.candidate), tuple(m.candidate)
    if m.fresh:
        return stats.mean(m.baseline), tuple(m.baseline)
    return None


def new_baseline_metrics(m: Measurement, *, kept: bool, has_change: bool) -> dict[str, Any]:
    """The metrics that go with :func:`new_baseline`'s score: the candidate's when it is
    the new baseline, else those of the baseline's last fresh measurement."""
    if m.fresh and not (kept and has_change):
        return m.baseline_metrics
    return m.metrics


def record_fields(task: Task | None, m: Measurement | None, how: Plan | None,
                  fingerprint: str | None, stored: Baseline | None) -> dict[str, Any]:
    """The record's section-8 fields; on every record, so that its shape never varies."""
    candidate = list(m.candidate) if m else []
    baseline = list(m.baseline) if m else list(how.stored) if how else []
    look = m.look if m else None
    delta = None
    if look is not None:
        delta = look.improvement
    elif candidate and baseline and task is not None:
        delta = improvement(stats.mean(candidate), stats.mean(baseline), task.direction)
    source = how.source if how else ("stored" if stored is not None else "none")
    if source == "remeasured" and not (m and m.fresh):
        source = "none"  # planned, but nothing was measured: held against nothing
    if m and m.fresh:
        baseline_metrics = m.baseline_metrics
    else:
        baseline_metrics = stored.metrics if stored is not None and source == "stored" else {}
    return {
        "candidate_scores": candidate,
        "baseline_scores": baseline,
        "improvement": delta,
        "interval": list(look.interval) if look and look.interval else None,
        "fingerprint": fingerprint,
        "baseline_source": source,
        "baseline_metrics": baseline_metrics,
    }
