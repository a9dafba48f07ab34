"""Batches (contract section 12): several candidates against one baseline, at most one keep.

    measure the baseline once (unless a comparable one is stored) and store it
    -> for each candidate, up to ``jobs`` at a time: prepare -> evaluate -> decide alone
    -> the best of those that would be kept alone is concluded (the keep)
    -> every other candidate is a discard that names the run it lost to
    -> refs, sandboxes, records, in run_id order

The confidence each candidate is judged with is corrected for the number compared
(Bonferroni: ``1 - (1 - confidence) / N``): picking the luckiest of N noisy candidates
at the single-candidate confidence would keep noise far more often than promised.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopengine import decide as decide_mod
from loopengine import executors, git, process, recovery, sandbox, stats, sync
from loopengine import measure as measure_mod
from loopengine.engine import cleanup, evaluate_candidate, finish, save_ref, settle
from loopengine.errors import Interrupted, LoopError
from loopengine.iteration import conclude as conclude_mod
from loopengine.iteration.common import (
    Candidate,
    EvalRequest,
    Evaluation,
    Ledger,
    StepCrash,
    Steps,
)
from loopengine.iteration.prepare import (
    check_repo_state,
    choose_baseline,
    prepare,
    snapshot_baseline,
)
from loopengine.progress import Reporter
from loopengine.results import Baseline, Record, load_baseline, locked, new_run_id, store_baseline
from loopengine.signals import SignalGuard
from loopengine.task import load_task

CANDIDATE_VAR = "LOOPENGINE_CANDIDATE"
_WAIT = 0.05


@dataclass(frozen=True)
class BatchOptions:
    task_path: str
    repo_root: Path
    patches: tuple[Path, ...] = ()
    candidates: int = 0  # with no patches: run the mutator this many times
    jobs: int = 1
    reporter: Reporter = field(default_factory=Reporter)
    run_ids: tuple[str, ...] = ()  # chosen by the caller (a loop notes them first)
    batch_id: str | None = None


@dataclass(frozen=True)
class BatchOutcome:
    records: list[Record]
    exit_code: int
    messages: list[str]
    batch_id: str


@dataclass
class _Slot:
    index: int
    run: Ledger
    patch: Path | None
    cand: Candidate | None = None
    ev: Evaluation | None = None
    released: bool = False  # its ref saved and its sandbox removed


def planned_run_ids(count: int) -> list[str]:
    """Run ids for ``count`` candidates, sorting in candidate order."""
    ids: list[str] = []
    while len(ids) < count:
        run_id = new_run_id()
        if not ids or run_id[:22] > ids[-1][:22]:
            ids.append(run_id)
    return ids


def corrected_confidence(confidence: float, compared: int) -> float:
    """Bonferroni: the chance that any of ``compared`` candidates is a false keep stays
    below ``1 - confidence``."""
    return 1.0 - (1.0 - confidence) / max(1, compared)


def run_batch(opts: BatchOptions) -> BatchOutcome:
    count = len(opts.patches) or opts.candidates
    batch_id = opts.batch_id or new_run_id()
    run_ids = list(opts.run_ids) or planned_run_ids(count)
    slots = [_Slot(i, Ledger(opts.repo_root, opts.reporter, run_id=run_ids[i],
                             batch_id=batch_id), opts.patches[i] if opts.patches else None)
             for i in range(count)]
    with contextlib.suppress(LoopError):
        # Once in this thread first: the threads below would import the task schema's
        # modules at the same moment, and a module half-imported by one is seen by another.
        load_task(opts.task_path, opts.repo_root)
    signum: int | None = None
    with SignalGuard() as guard, cf.ThreadPoolExecutor(
            max_workers=max(1, opts.jobs), thread_name_prefix="loopengine-candidate") as pool, \
            cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopengine-baseline") as side:
        futures: list[cf.Future[Any]] = []
        try:
            guard.raise_pending()
            # The baseline is measured while the candidates are prepared (sandbox, mutator,
            # validation); each candidate waits for it only before its evaluation.
            baseline = side.submit(measure_baseline, opts, batch_id)
            futures = [baseline, *(pool.submit(_candidate, opts, slot, count, baseline)
                                   for slot in slots)]
            _wait(futures)
        except Interrupted as exc:
            signum = exc.signum
            process.cancel_workers(exc.signum)
            with guard.deferred():
                _wait(futures)
        finally:
            process.cancel_workers(None)
        with guard.deferred():
            for slot in slots:
                if slot.run.guard is None:  # never started: the signal came first
                    slot.run.guard = guard
                    slot.run.crash("interrupted", f"interrupted by "
                                   f"{guard.name(signum or guard.received or 2)} "
                                   "before this candidate started")
            records, messages = _conclude(slots, guard)
        signum = signum or guard.received
    if signum is not None:
        code = 128 + signum
    else:
        code = 1 if all(r.status == "crash" for r in records) else 0
    return BatchOutcome(records, code, messages, batch_id)


def _wait(futures: Sequence[cf.Future[Any]]) -> None:
    pending = set(futures)
    while pending:  # in slices, so that a signal reaches the main thread promptly
        _done, pending = cf.wait(pending, timeout=_WAIT)


def _candidate(opts: BatchOptions, slot: _Slot, count: int,
               baseline: cf.Future[Measured | None]) -> None:
    """prepare -> evaluate -> decide alone, in a worker thread; never raises."""
    run = slot.run
    run.guard = SignalGuard()  # not entered: only its deferral; signals come via cancel
    run.started = dt.datetime.now(dt.UTC)
    run.t0 = time.monotonic()
    try:
        process.check_cancelled()
        cand = prepare(run, opts.task_path, patch_file=slot.patch,
                       env={CANDIDATE_VAR: str(slot.index)})
        cand = _batch_view(run, cand, count, baseline.result())
        process.check_cancelled()
        slot.ev = evaluate_candidate(run, cand)
        slot.cand = cand
        run.decision = conclude_mod.decide(cand, slot.ev, run.baseline)
    except BaseException as exc:
        if not settle(run, exc):
            run.crash("internal", f"internal error: {type(exc).__name__}: {exc}")
    if run.decision is None or run.decision.status != "keep":
        # Not a contender: its ref and sandbox are done with now, in parallel with the
        # others, rather than one by one at the end.
        with run.guard.deferred():
            _release(slot)


def _release(slot: _Slot) -> None:
    if slot.released:
        return
    slot.released = True
    try:
        save_ref(slot.run)
    finally:
        cleanup(slot.run, keep_sandbox=False)


def _batch_view(run: Ledger, cand: Candidate, count: int,
                measured: Measured | None) -> Candidate:
    """The candidate as the batch judges it: the batch's own baseline, and the confidence
    corrected for the number of candidates compared."""
    policy = cand.task.policy
    task = dataclasses.replace(cand.task, policy=dataclasses.replace(
        policy, confidence=corrected_confidence(policy.confidence, count)))
    plan, stored = cand.plan, cand.stored
    # The candidate read the store before or after the batch stored its baseline.
    if (measured is not None and stored in (measured.replaced, measured.new)
            and measured.new.fingerprint == cand.fingerprint
            and measured.new.artifacts == sync.digest(cand.start_state)):
        # Measured for this batch a moment ago: never again per candidate, whatever
        # policy.remeasure_baseline says.
        stored = run.stored = run.baseline = measured.new
        plan = measure_mod.Plan("stored", stored.scores or (stored.score,))
    run.plan = plan
    run.task = task
    return dataclasses.replace(cand, task=task, plan=plan, stored=stored,
                               baseline=run.baseline)


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def _conclude(slots: list[_Slot], guard: SignalGuard) -> tuple[list[Record], list[str]]:
    """The keep (at most one), then every candidate's ref, sandbox and record."""
    keepers = [s for s in slots if s.cand is not None and s.ev is not None
               and s.run.decision is not None and s.run.decision.status == "keep"
               and s.ev.score is not None]
    winner: _Slot | None = None
    for s in keepers:
        assert s.ev is not None and s.ev.score is not None and s.cand is not None
        if winner is None or _better(s.ev.score, winner.ev.score,  # type: ignore[union-attr]
                                     s.cand.task.direction):
            winner = s
    if winner is not None:
        assert winner.cand is not None and winner.ev is not None
        run = winner.run
        try:
            conclude_mod.conclude(run, winner.cand, winner.ev)
            if run.decision is not None and run.decision.status == "keep" and len(slots) > 1:
                run.decision = dataclasses.replace(
                    run.decision, reason=f"{run.decision.reason}; the best of "
                    f"{len(keepers)} that would be kept, among {len(slots)} candidates "
                    f"(confidence corrected to {winner.cand.task.policy.confidence:.4g})")
        except BaseException as exc:
            if not settle(run, exc):
                raise
    kept = winner is not None and winner.run.decision is not None \
        and winner.run.decision.status == "keep"
    for s in slots:
        if s is winner or s.run.decision is None or s.run.decision.status == "crash":
            continue
        s.run.decision = _lost(s, winner, kept)
    records: list[Record] = []
    messages: list[str] = []
    for s in slots:
        run = s.run
        _release(s)
        records.append(finish(run))
        if run.message:
            messages.append(f"{run.run_id}: {run.message}")
    return records, messages


def _lost(s: _Slot, winner: _Slot | None, kept: bool) -> decide_mod.Decision:
    decision = s.run.decision
    assert decision is not None
    if winner is None:
        return decision
    ws = winner.ev.score if winner.ev else None
    if decision.status == "keep":
        assert s.ev is not None
        if kept:
            why = (f"lost to run {winner.run.run_id} (score {decide_mod.fmt(ws)} against "
                   f"{decide_mod.fmt(s.ev.score)}); on its own: {decision.reason}")
        else:
            why = (f"not kept: the batch chose run {winner.run.run_id} (score "
                   f"{decide_mod.fmt(ws)}), which was not kept; on its own: {decision.reason}")
        return decide_mod.Decision("discard", why)
    if kept:
        return dataclasses.replace(decision, status="discard",
                                   reason=f"{decision.reason}; lost to run {winner.run.run_id}")
    return decision


# ---------------------------------------------------------------------------
# One baseline for the whole batch


@dataclass(frozen=True)
class Measured:
    """The baseline a batch measured and stored, and what it replaced in the store."""

    new: Baseline
    replaced: Baseline | None


def measure_baseline(opts: BatchOptions, batch_id: str) -> Measured | None:
    """Measure the baseline once for the batch and store it, unless a comparable one is
    stored.  A failure is left to the candidates, which then measure it as ``run`` would."""
    run = Ledger(opts.repo_root, opts.reporter, run_id=batch_id)
    run.guard = SignalGuard()
    run.alive.claim()
    (run.run_dir / recovery.BATCH_BASELINE).write_text(json.dumps({
        "batch_id": batch_id, "what": "the baseline, measured once for the batch's "
        "candidates; not a run of its own (no record)"}) + "\n")
    try:
        task = run.task = load_task(opts.task_path, opts.repo_root)
        run.repo = git.repo_info(opts.repo_root)
        overlay = check_repo_state(run)
        snapshot_baseline(run)
        run.sb = sandbox.create(run.repo, batch_id, overlay)
        run.alive.note_sandbox(run.sb)
        choose_baseline(run)
        assert run.plan is not None
        if run.plan.source == "stored" and not task.policy.remeasure_baseline:
            return None
        opts.reporter.phase("the batch's baseline")
        if task.executor.kind != "local":
            scores, metrics = _baseline_elsewhere(run, batch_id)
        else:
            steps = Steps(task, run.sb, batch_id, run.run_dir,
                          deadline=time.monotonic() + task.max_seconds,
                          report=opts.reporter, repo=run.repo)
            evaluator = measure_mod.Evaluator(task, run.sb, [], steps.run, steps.parse_score,
                                              log_dir=run.run_dir, phase=opts.reporter.phase)
            samples = [evaluator(measure_mod.BASELINE) for _ in range(task.policy.repeats)]
            scores, metrics = tuple(s.score for s in samples), samples[-1].metrics
        new = Baseline(score=stats.mean(list(scores)), artifacts=sync.digest(run.start_state),
                       run_id=batch_id, fingerprint=run.fingerprint, scores=scores,
                       metrics=metrics)
        with locked(opts.repo_root):
            if (load_baseline(opts.repo_root, task.id) == run.stored
                    and sync.artifact_state(opts.repo_root, task) == run.start_state):
                store_baseline(opts.repo_root, task.id, new)
                return Measured(new, run.stored)
        return None
    except Exception as exc:  # never fatal: the candidates measure it then
        opts.reporter.info(f"the batch's baseline could not be measured ({exc}); each "
                           "candidate measures it")
        return None
    finally:
        cleanup(run, keep_sandbox=False)
        run.alive.release()


def _baseline_elsewhere(run: Ledger, batch_id: str) -> tuple[tuple[float, ...], dict[str, Any]]:
    """The batch's baseline measured on the task's executor (a Ray cluster): the unchanged
    tree, ``policy.repeats`` times, as one piece of work."""
    task, sb = run.task, run.sb
    assert task is not None and sb is not None
    req = EvalRequest(run_id=batch_id, task=task, start_tree=sb.start_tree, tree=sb.start_tree,
                      commit=None, changes=(), frozen=sync.artifact_state(sb.tree, task),
                      plan=measure_mod.Plan("none"), seconds_left=task.max_seconds)
    ev = executors.evaluate(req, sb, deadline=time.monotonic() + task.max_seconds,
                            log_dir=run.run_dir, note=run.report.info).evaluation
    if ev.crash is not None:
        raise StepCrash(ev.crash.kind, ev.crash.reason, ev.crash.tail)
    if not ev.measured.candidate:
        raise LoopError(ev.stop.reason if ev.stop else "no measurement came back")
    return tuple(ev.measured.candidate), ev.measured.metrics
