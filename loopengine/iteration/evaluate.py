"""Stage two: the runner and scorer measurements of a frozen candidate against its baseline.

Runs from data alone: an :class:`EvalRequest` (the task, the candidate's tree and the
change from its baseline, the plan for the baseline) and a sandbox that holds the
candidate's tree.  It never touches the main tree, so candidates can be evaluated side
by side, and on another machine (:func:`evaluate_commit` makes its own sandbox from the
candidate's commit).  Failures are values: :class:`Evaluation` says how it ended.
"""

from __future__ import annotations

import time
from pathlib import Path

from loopengine import decide as decide_mod
from loopengine import git, sandbox, sync
from loopengine import measure as measure_mod
from loopengine.errors import LoopError
from loopengine.iteration.common import Crash, EvalRequest, Evaluation, StepCrash, Steps
from loopengine.progress import Reporter


def evaluate(req: EvalRequest, sb: sandbox.Sandbox, steps: Steps, *,
             report: Reporter | None = None,
             measured: measure_mod.Measurement | None = None) -> Evaluation:
    """Measure the candidate (and its baseline as the plan asks) in ``sb``.

    ``measured`` receives the measurements as they are made, so that a caller still has
    them when a signal ends the evaluation half-way.
    """
    task = req.task
    deadline = time.monotonic() + req.seconds_left
    steps.deadline = min(steps.deadline, deadline)
    m = measured if measured is not None else measure_mod.Measurement(
        baseline=list(req.plan.stored), noise=req.noise)
    # With repeats, the step logs say which measurement each part belongs to.
    marked = task.policy.repeats > 1
    evaluator = measure_mod.Evaluator(
        task, sb, list(req.changes), steps.run, steps.parse_score,
        log_dir=steps.log_dir if marked else None,
        phase=report.phase if report is not None else None)
    try:
        measure_mod.measure(task, evaluator, req.plan, m, has_change=bool(req.changes),
                            time_left=lambda: steps.deadline - time.monotonic())
        if m.stop is not None:
            return Evaluation(m, stop=m.stop)
        # The runner or scorer must not have changed what was validated.
        if sync.artifact_state(sb.tree, task) != req.frozen:
            return Evaluation(m, stop=decide_mod.Decision(
                "discard", "an artifact changed after validation (by the runner or scorer); "
                "the validated candidate is not what was scored"))
    except StepCrash as exc:
        return Evaluation(m, crash=Crash(exc.crash_kind, str(exc), exc.tail))
    except LoopError as exc:
        return Evaluation(m, crash=Crash(exc.crash_kind, str(exc), message=str(exc)))
    return Evaluation(m)


def evaluate_commit(req: EvalRequest, repo_root: Path, log_dir: Path, *,
                    report: Reporter | None = None) -> Evaluation:
    """Evaluate ``req.commit`` in a sandbox of its own, made from the repository's objects.

    For an evaluation away from the run that prepared the candidate (another process,
    another machine with a clone that has the candidate's ref).
    """
    if req.commit is None:
        raise LoopError("the candidate has no commit to evaluate")
    repo = git.repo_info(repo_root)
    at = git.RepoInfo(repo.root, repo.git_dir, repo.common_dir, req.commit, None)
    sb = sandbox.create(at, req.run_id, [])
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        steps = Steps(req.task, sb, req.run_id, log_dir,
                      deadline=time.monotonic() + req.seconds_left,
                      report=report or Reporter())
        return evaluate(req, sb, steps, report=report)
    finally:
        sandbox.remove(sb, repo)
