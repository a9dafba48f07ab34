"""``run_iteration()``: the only place that knows the order of the stages.

    prepare  (iteration/prepare.py):  load task -> snapshot baseline -> sandbox
                                      -> mutator (or patch) -> validate -> Candidate
    evaluate (iteration/evaluate.py): runner -> scorer (as often as the policy asks)
                                      -> Evaluation
    conclude (iteration/conclude.py): decide -> (keep: sync + commit, under the lock)
    then:    save the candidate's ref -> remove the sandbox -> record
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loopengine import decide as decide_mod
from loopengine import executors, faults, noise, sandbox, stats
from loopengine import measure as measure_mod
from loopengine.campaign import refs
from loopengine.errors import Interrupted, LoopError
from loopengine.iteration import conclude as conclude_mod
from loopengine.iteration.common import (
    Candidate,
    EvalRequest,
    Evaluation,
    Ledger,
    Outcome,
    StepCrash,
    Verdict,
)
from loopengine.iteration.evaluate import evaluate
from loopengine.iteration.prepare import prepare
from loopengine.progress import Reporter
from loopengine.results import DEFAULT_RESULTS, Record, save_record
from loopengine.signals import SignalGuard

__all__ = ["Options", "Outcome", "StepCrash", "Verdict", "run_iteration"]


@dataclass(frozen=True)
class Options:
    task_path: str
    repo_root: Path
    patch_file: Path | None = None
    keep_sandbox: bool = False
    reporter: Reporter = field(default_factory=Reporter)
    run_id: str | None = None  # chosen by the caller (a loop notes it before it starts)


def run_iteration(opts: Options) -> Outcome:
    run = Ledger(opts.repo_root, opts.reporter, run_id=opts.run_id)

    def stages() -> None:
        cand = prepare(run, opts.task_path, patch_file=opts.patch_file,
                       keep_sandbox=opts.keep_sandbox)
        ev = evaluate_candidate(run, cand)
        decide_and_keep(run, cand, ev)

    return guarded(run, stages, keep_sandbox=opts.keep_sandbox)


def guarded(run: Ledger, stages: Callable[[], None], *, keep_sandbox: bool = False) -> Outcome:
    """Run ``stages`` under a signal guard; whatever happens, clean up and write the record."""
    with SignalGuard() as guard:
        run.guard = guard
        try:
            stages()
        except BaseException as exc:
            if not settle(run, exc):
                raise
        finally:
            with guard.deferred():
                try:
                    save_ref(run)
                finally:
                    cleanup(run, keep_sandbox)
        with guard.deferred():
            record = finish(run)
        signum = guard.received
    if signum is not None:
        return Outcome(record, 128 + signum, run.message)
    return Outcome(record, 1 if record.status == "crash" else 0, run.message)


def settle(run: Ledger, exc: BaseException) -> bool:
    """Turn what ended the iteration into its decision; False for what is not ours."""
    if isinstance(exc, Verdict):
        run.decision = exc.decision
    elif isinstance(exc, Interrupted):
        assert run.guard is not None
        run.crash("interrupted", f"interrupted by {run.guard.name(exc.signum)}")
    elif isinstance(exc, StepCrash):
        run.crash(exc.crash_kind, str(exc), exc.tail)
    elif isinstance(exc, LoopError):
        run.crash(exc.crash_kind, str(exc))
        run.message = str(exc)
    elif isinstance(exc, Exception):
        run.crash("internal", f"internal error: {type(exc).__name__}: {exc}")
        run.internal_traceback = traceback.format_exc()
    else:
        return False
    return True


def request(run: Ledger, cand: Candidate) -> EvalRequest:
    return EvalRequest(
        run_id=cand.run_id, task=cand.task, start_tree=cand.sandbox.start_tree, tree=cand.tree,
        commit=None, changes=tuple(cand.stats.files), frozen=dict(cand.frozen),
        plan=cand.plan, seconds_left=run.deadline - time.monotonic(),
        # With repeats, the noise pooled over earlier runs of this evaluation.
        noise=(noise.load(run.root, cand.task.id, cand.fingerprint)
               if cand.task.policy.repeats > 1 else stats.Pool()))


def evaluate_candidate(run: Ledger, cand: Candidate) -> Evaluation:
    """Evaluate in the candidate's own sandbox, or on the task's executor (a Ray cluster);
    a crash or stop ends the iteration."""
    assert run.steps is not None
    req = request(run, cand)
    if cand.task.executor.kind != "local":
        run.report.phase(f"evaluate on the {cand.task.executor.kind} executor")
        result = executors.evaluate(req, cand.sandbox, deadline=run.deadline,
                                    log_dir=run.run_dir, env=run.steps.env,
                                    note=run.report.info)
        run.extra["node"] = result.node
        return settle_evaluation(run, cand, result.evaluation)
    run.measured = measure_mod.Measurement(baseline=list(cand.plan.stored), noise=req.noise)
    try:
        ev = evaluate(req, cand.sandbox, run.steps, report=run.report, measured=run.measured)
    finally:
        run.score, run.metrics = run.measured.score, run.measured.metrics
    return settle_evaluation(run, cand, ev)


def settle_evaluation(run: Ledger, cand: Candidate, ev: Evaluation) -> Evaluation:
    run.measured = ev.measured
    run.score, run.metrics = ev.score, ev.metrics
    if ev.crash is not None:
        if ev.crash.message:
            run.message = ev.crash.message
        raise StepCrash(ev.crash.kind, ev.crash.reason, ev.crash.tail)
    conclude_mod.measured_baseline(run, cand, ev)
    if ev.stop is not None:
        raise Verdict(ev.stop)
    return ev


def decide_and_keep(run: Ledger, cand: Candidate, ev: Evaluation) -> None:
    run.decision = conclude_mod.decide(cand, ev, run.baseline)
    assert run.guard is not None
    with run.guard.deferred():
        conclude_mod.conclude(run, cand, ev)
        pool_noise(run, cand, ev)


def pool_noise(run: Ledger, cand: Candidate, ev: Evaluation) -> None:
    """With repeats, this iteration's runs sharpen the evaluation's noise estimate."""
    if cand.task.policy.repeats == 1 or run.decision is None:
        return
    kept = run.decision.status == "keep"
    noise.add(run.root, cand.task.id, cand.fingerprint,
              measure_mod.retired_groups(ev.measured, kept=kept))


# -- the end ----------------------------------------------------------------------


def save_ref(run: Ledger) -> None:
    """Save the candidate under refs/loopengine/ (section 11), whatever its status."""
    repo, sb, task = run.repo, run.sb, run.task
    if not run.validated or repo is None or sb is None or task is None or sb.head is None:
        return
    if not repo.is_git:
        return
    decision = run.decision or decide_mod.Decision("crash", "no decision was reached",
                                                    crash_kind="internal")
    changes = refs.saved_changes(task, run.stats.files, decision.violations)
    try:
        # Only the ref's blobs reach the user's object store, nothing else the step made.
        sandbox.promote(sb, repo, [f.new_sha for f in changes if f.status != "D"])
        saved = refs.save(
            repo, sb.ctx, task=task, run_id=run.run_id, status=decision.status,
            reason=decision.reason or decision.status, summary=run.stats.summary,
            start_commit=sb.head,
            changes=changes,
            score=run.score, baseline=run.baseline.score if run.baseline else None,
            scratch=sb.base)
    except LoopError as exc:
        warning = f"the candidate's ref was not saved: {exc}"
        run.message = f"{run.message}; {warning}" if run.message else warning
        return
    run.ref = saved.ref


def cleanup(run: Ledger, keep_sandbox: bool) -> None:
    if run.reserved is not None:
        run.reserved.cancel()  # unless the sandbox took it over
    if run.sb is None or run.repo is None:
        return
    if keep_sandbox:
        sandbox.hand_over(run.sb)
        run.report.info(f"sandbox kept at {run.sb.tree}")
        run.alive.note_kept()
        return
    sandbox.remove(run.sb, run.repo)
    run.alive.note_removed()


def finish(run: Ledger) -> Record:
    task = run.task
    results_path = task.results_path if task else DEFAULT_RESULTS
    record = run.build_record()
    try:
        if run.internal_traceback:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / "engine.log").write_text(run.internal_traceback)
        faults.point("before_record")
        warning = save_record(run.root, results_path, record)
    except OSError as exc:
        # work/ cannot take it (a file in the way, no space): the record is on stdout.
        warning = (f"the record could not be saved ({exc.strerror}: {exc.filename}); "
                   "it is only on stdout")
    if warning:
        run.message = f"{run.message}; {warning}" if run.message else warning
    if run.unfinished:
        note = f"{run.unfinished}; the next run finishes it"
        run.message = f"{run.message}; {note}" if run.message else note
    else:
        with contextlib.suppress(OSError):
            run.alive.release()  # unfinished: it stays, so the next run finishes the keep
    run.report.finished(record)
    return record
