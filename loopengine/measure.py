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

import math
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from loopengine import git, sandbox, stats, sync
from loopengine.decide import Decision, Look, check_constraints, improvement, judge
from loopengine.diff import FileChange
from loopengine.errors import LoopError
from loopengine.results import Baseline
from loopengine.sandbox import Sandbox
from loopengine.task import Task, match_artifact

BASELINE, CANDIDATE = "baseline", "candidate"
# With repeats, the baseline is measured before each candidate run until it holds this many
# runs per candidate run, up to BASELINE_CAP per repeat; it is kept across candidates until
# the next keep, so its runs are shared by every candidate held against it.
BASELINE_RATIO = 3
BASELINE_CAP = 1.5
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


def plan(task: Task, baseline: Baseline | None, fingerprint: str | None,
         missing: Sequence[str] = ()) -> Plan:
    """``baseline`` is the stored one if it was measured on exactly these artifacts;
    ``missing`` the artifact patterns that match no file in the main tree."""
    policy = task.policy
    if baseline is None:
        if missing:
            # Nothing to evaluate: policy.keep_when_no_baseline decides.
            return Plan("none", why=f"{missing[0]} does not exist yet, so there is no "
                        "baseline to measure")
        # Never keep unmeasured against nothing: the main tree's artifacts are measured.
        return Plan("remeasured", why="the baseline is measured in this iteration: no "
                    "baseline is stored for the artifacts as they are")
    if baseline.fingerprint != fingerprint:
        # Never compare across evaluations: the stored score answers another question.
        return Plan("remeasured", why="the baseline is measured again: the stored one was "
                    "measured by another evaluation (its fingerprint differs)")
    if policy.remeasure_baseline:
        return Plan("remeasured", why="the baseline is measured again: "
                    "policy.remeasure_baseline")
    if not baseline.scores and policy.repeats > 1:
        # A kept candidate's own scores are biased upward by the selection that kept it
        # (the winner's curse), so they are never stored as measurements.
        return Plan("remeasured", why="the baseline is measured again: the stored one has "
                    "no measurement of its own (it is the score of the keep that made it)")
    return Plan("stored", baseline.scores or (baseline.score,))


def missing_artifacts(task: Task, state: Mapping[str, str]) -> list[str]:
    """The ``artifacts.include`` patterns that match none of the files in ``state``."""
    missing = []
    for pattern in task.include:
        alone = replace(task, include=(pattern,))
        if not any(match_artifact(alone, path) for path in state):
            missing.append(pattern)
    return missing


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
        self.sb = sb
        self.index = sb.index("integrity")
        self.settled = sandbox.settle(sb)
        shutil.copy2(sb.start_index, self.index)  # copy2: keep the mtime git's racy check uses
        self.ctx = sb.ctx.with_index(self.index)

    def changed(self) -> list[str]:
        if not self.settled and sandbox.settle(self.sb):
            # The start index is no longer racy: compare with a copy of it from now on,
            # not re-hash the files of the checkout's last second at every check.
            self.settled = True
            shutil.copy2(self.sb.start_index, self.index)
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
        # The candidate's exact bytes, to lay back after a baseline run: written from its
        # blobs, a filter that does not round-trip (ident, a smudge) would change them.
        self.saved = _save(sb.tree, changes) if current == CANDIDATE else {}
        self.integrity = Integrity(task, sb)
        self.log_dir, self.phase = log_dir, phase
        self.count = 0
        self.longest = 0.0

    def lay(self, side: str) -> None:
        if side != self.current:
            exact = self.saved if side == CANDIDATE else {}
            sync.write_files(self.sb.tree, self.sb.ctx,
                             [f for f in self.files[side] if f.path not in exact])
            for path, (data, perm) in exact.items():
                _write_exact(self.sb.tree / path, data, perm)
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


def _save(tree: Path, changes: Sequence[FileChange]) -> dict[str, tuple[bytes, int]]:
    """The bytes and permission bits of each changed regular file as it is now."""
    saved = {}
    for f in changes:
        path = tree / f.path
        if f.status == "D" or path.is_symlink() or not path.is_file():
            continue
        saved[f.path] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return saved


def _write_exact(target: Path, data: bytes, perm: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.loopengine-lay")
    tmp.write_bytes(data)
    os.chmod(tmp, perm)
    os.replace(tmp, target)


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
    metrics: dict[str, Any] = field(default_factory=dict)  # the candidate's, over its runs
    look: Look | None = None
    stop: Decision | None = None  # a discard or crash found while measuring
    noise: stats.Pool = field(default_factory=stats.Pool)  # earlier runs of the evaluation
    runs: int = 0  # runner+scorer runs started in this iteration, both sides
    samples: list[dict[str, Any]] = field(default_factory=list)  # each candidate run's metrics
    baseline_metrics: dict[str, Any] = field(default_factory=dict)  # its last fresh run's

    @property
    def score(self) -> float | None:
        return stats.mean(self.candidate) if self.candidate else None


def measure(task: Task, evaluate: Measures, how: Plan, m: Measurement, *, has_change: bool,
            time_left: Callable[[], float] = lambda: float("inf"),
            paired: bool = False) -> None:
    """Measure into ``m`` until the verdict is clear or ``policy.repeats`` candidate runs
    are done; ``m`` starts with the stored baseline measurements, and keeps what was
    measured when a step fails half-way.  ``paired``: one baseline run before each
    candidate run, whatever the policy (``verify``)."""
    try:
        if how.source == "none" or not has_change:
            _measure_alone(task, evaluate, how, m, has_change, time_left)
        else:
            _measure_against(task, evaluate, m, time_left, paired)
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
    # What is measured here becomes the baseline: the runs a first candidate run needs
    # (the next candidates grow it), or every run the policy allows without a baseline.
    runs = 1 if settled or refused else policy.repeats
    if how.source == "remeasured":
        runs = baseline_target(task, 1)
    for i in range(runs):
        # Repeats fill the budget, never overrun it: what was measured in time counts.
        if i and time_left() < BUDGET_MARGIN * evaluate.longest:
            break
        if not _candidate(task, evaluate, m):
            return
    if how.source == "remeasured":  # the unchanged candidate is the baseline
        m.baseline, m.fresh = list(m.candidate), len(m.candidate)
        m.baseline_metrics = dict(m.samples[-1]) if m.samples else {}


def _measure_against(task: Task, evaluate: Measures, m: Measurement,
                     time_left: Callable[[], float], paired: bool) -> None:
    policy = task.policy
    repeats = policy.repeats
    for k in range(1, repeats + 1):
        # B before C: the baseline is topped up before each candidate run.
        need = max(baseline_target(task, k, paired) - len(m.baseline), 0)
        if k > 1 and time_left() < BUDGET_MARGIN * evaluate.longest * (1 + need):
            m.look = _judge(task, m, final=True)  # no room for another: decide now
            return
        for _ in range(need):
            _baseline(evaluate, m)
        if not _candidate(task, evaluate, m):
            return
        m.look = _judge(task, m, final=k == repeats)
        if m.look.state != "more":
            return


def baseline_target(task: Task, k: int, paired: bool = False) -> int:
    """How many baseline runs the comparison needs before the candidate's run ``k``.

    One with ``repeats: 1`` (the defaults, as ever); one per candidate run when paired
    (``remeasure_baseline``, ``verify``); else ``BASELINE_RATIO`` per candidate run, up to
    ``BASELINE_CAP`` x ``repeats``.  The baseline's standard error adds to every
    comparison, so it needs more runs than one candidate; kept until the next keep, its
    runs are shared by every candidate measured against it.
    """
    policy = task.policy
    if policy.repeats == 1:
        return 1
    if paired or policy.remeasure_baseline:
        return k
    return int(min(BASELINE_RATIO * k, BASELINE_CAP * policy.repeats))


def _baseline(evaluate: Measures, m: Measurement) -> None:
    m.runs += 1
    try:
        sample = evaluate(BASELINE)
    except LoopError as exc:
        # The candidate is not to blame: say whose evaluation failed.
        exc.args = (f"{exc} (the baseline's own evaluation failed: the artifacts as they "
                    "are in the main tree, measured before the candidate)",)
        raise
    m.baseline.append(sample.score)
    m.baseline_metrics = dict(sample.metrics)
    m.fresh += 1
    m.order.append("B")


def _candidate(task: Task, evaluate: Measures, m: Measurement) -> bool:
    """One candidate measurement; False when a constraint's metric is missing (a crash)."""
    m.runs += 1
    sample = evaluate(CANDIDATE)
    m.candidate.append(sample.score)
    m.order.append("C")
    m.samples.append(dict(sample.metrics))
    m.metrics = mean_metrics(m.samples)
    broken = check_constraints(task.constraints, sample.metrics)
    if broken is not None and broken.status == "crash":
        m.stop = broken
        return False
    return True


def mean_metrics(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last run's metrics, with each number that every run reported replaced by its
    mean over the runs: constraints under repeats are judged on the mean."""
    if not samples:
        return {}
    last = dict(samples[-1])
    if len(samples) == 1:
        return last
    for key in list(last):
        values = [s.get(key) for s in samples]
        if all(_finite(v) for v in values):
            last[key] = stats.mean([float(v) for v in values])  # type: ignore[arg-type]
    return last


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _judge(task: Task, m: Measurement, final: bool) -> Look:
    return judge(m.candidate, m.baseline, direction=task.direction,
                 min_improvement=task.policy.min_improvement,
                 confidence=task.policy.confidence, repeats=task.policy.repeats, final=final,
                 noise=m.noise, effect=task.policy.effect)


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


def retired_groups(m: Measurement, *, kept: bool) -> list[list[float]]:
    """The groups of runs that join the pooled noise when the iteration ends: the
    candidate's, and on a keep the baseline's (the store drops it)."""
    groups = [list(m.candidate)] if m.look is not None else []
    if kept:
        groups.append(list(m.baseline))
    return groups


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
        "runs": m.runs if m else 0,
    }
