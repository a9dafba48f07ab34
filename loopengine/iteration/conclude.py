"""Stage three: decide, and keep under the lock (the keep transaction).

The only stage that writes to the main tree: the artifact files, the keep commit, the
baseline store, each step noted in the run's journal first so that a run killed half-way
is finished (or undone) by the next one.
"""

from __future__ import annotations

from loopengine import decide as decide_mod
from loopengine import faults, journal, sandbox, stats, sync
from loopengine import measure as measure_mod
from loopengine.iteration.common import Candidate, Evaluation, Ledger, StepCrash
from loopengine.results import Baseline, load_baseline, locked, store_baseline


def measured_baseline(run: Ledger, cand: Candidate, ev: Evaluation) -> None:
    """The baseline the candidate was held against, when this iteration measured it."""
    m = ev.measured
    if m.baseline and cand.plan.source != "none":
        metrics = m.baseline_metrics if m.fresh else \
            run.baseline.metrics if run.baseline else {}
        run.baseline = Baseline(
            score=stats.mean(m.baseline), artifacts=sync.digest(cand.start_state),
            run_id=run.run_id, fingerprint=cand.fingerprint, scores=tuple(m.baseline),
            metrics=metrics)


def decide(cand: Candidate, ev: Evaluation, baseline: Baseline | None) -> decide_mod.Decision:
    """The decision on its own merits; a crash decision becomes a :class:`StepCrash`."""
    task = cand.task
    decision = decide_mod.decide(
        score=ev.score,
        baseline=baseline.score if baseline else None,
        direction=task.direction,
        min_improvement=task.policy.min_improvement,
        constraints=task.constraints,
        metrics=ev.metrics,
        has_change=cand.has_change,
        keep_when_no_baseline=task.policy.keep_when_no_baseline,
        verdict=ev.measured.look,
    )
    if decision.status == "crash":
        raise StepCrash(decision.crash_kind or "scorer", decision.reason)
    return decision


def conclude(run: Ledger, cand: Candidate, ev: Evaluation) -> None:
    """Keep (or store a freshly measured baseline) under the lock, if nothing moved."""
    assert run.decision is not None and ev.score is not None
    keep = run.decision.status == "keep"
    new = next_baseline(run, cand, ev, keep)
    if new is None:
        return
    # A discard that only measured the baseline afresh stores it if nothing moved.
    decides = keep or cand.plan.source == "none"
    with locked(run.root):
        if load_baseline(run.root, cand.task.id) != cand.stored:
            if decides:
                run.decision = decide_mod.Decision(
                    "discard", "baseline changed during run; another iteration kept first")
            return
        if sync.artifact_state(run.root, cand.task) != cand.start_state:
            if decides:
                run.decision = decide_mod.Decision(
                    "discard", "the main tree's artifacts changed while the iteration ran")
            return
        if keep and cand.has_change:
            note_uncommitted(run, cand)
        write_intent(run, cand, ev, keep)
        if keep and cand.has_change:
            sync_keep(run, cand)
        try:
            store_baseline(run.root, cand.task.id, new)
        except OSError as exc:
            if run.committed:
                run.unfinished = f"the baseline could not be stored ({exc})"
            raise
        run.journal.write("baseline")
        faults.point("after_baseline")


def next_baseline(run: Ledger, cand: Candidate, ev: Evaluation, keep: bool) -> Baseline | None:
    """What this iteration stores as the baseline, if anything."""
    new = measure_mod.new_baseline(ev.measured, cand.plan, kept=keep,
                                   has_change=cand.has_change)
    if new is None:
        return None
    state = cand.frozen if keep and cand.has_change else cand.start_state
    metrics = measure_mod.new_baseline_metrics(ev.measured, kept=keep,
                                               has_change=cand.has_change)
    return Baseline(score=new[0], artifacts=sync.digest(state), run_id=run.run_id,
                    fingerprint=cand.fingerprint, scores=new[1], metrics=metrics)


def note_uncommitted(run: Ledger, cand: Candidate) -> None:
    """The keep commit is HEAD plus the kept files, so it also carries the user's
    uncommitted edits of those files (the candidate was made on top of them): the
    record and the commit message say so, with the number of lines."""
    assert run.repo is not None and run.decision is not None
    if not (cand.task.policy.commit_on_keep and run.repo.is_git):
        return
    lines, paths = sync.uncommitted_lines(run.repo, [f.path for f in cand.stats.files])
    run.extra["uncommitted_lines"] = lines
    run.extra["uncommitted_files"] = paths if lines else []
    if lines:
        run.uncommitted = (f"{lines} uncommitted line{'s' * (lines != 1)} of yours "
                           f"({', '.join(paths)})")


def write_intent(run: Ledger, cand: Candidate, ev: Evaluation, keep: bool) -> None:
    """All that recovery needs to finish this keep, written before its first write."""
    assert run.repo is not None
    changes = list(cand.stats.files) if keep else []
    commits = bool(changes) and cand.task.policy.commit_on_keep and run.repo.is_git
    baseline = next_baseline(run, cand, ev, keep)
    assert baseline is not None
    run.journal.intent(
        record=run.build_record(),
        changes=changes,
        start=cand.start_state,
        frozen=cand.frozen,
        index=journal.index_entries(run.repo, [f.path for f in changes]) if commits else {},
        stored=cand.stored,
        baseline=baseline,
        objects=None if run.repo.is_git else cand.sandbox.ctx.git_dir,
        commits=commits,
    )


def sync_keep(run: Ledger, cand: Candidate) -> None:
    """The keep transaction (sync.py): prepare, the commit point, apply."""
    assert run.repo is not None
    run.report.phase("sync")
    changes = list(cand.stats.files)
    commits = cand.task.policy.commit_on_keep and run.repo.is_git
    staged = sync.staged_for(run.root, run.repo, run.run_id, changes, index=commits)
    sync.prepare(staged, run.repo, cand.sandbox.tree, cand.sandbox.ctx, cand.frozen)
    try:
        if commits:
            def before_ref_update(commit: str, ref: str) -> None:
                run.journal.write("commit", commit=commit, ref=ref)
                faults.point("before_ref_update")

            sandbox.promote(cand.sandbox, run.repo,
                            [f.new_sha for f in changes if f.status != "D"])
            made = sync.make_commit(run.repo, changes, commit_message(run, cand),
                                    cand.sandbox.base, before_update=before_ref_update)
            if made is not None:
                run.commit = made[0]
            run.journal.write("ref_updated", commit=run.commit)  # the commit point
        else:
            run.journal.write("prepared")  # the commit point of a keep with no commit
        run.committed = True
    except BaseException:
        if run.commit is None:
            staged.abandon()
        else:  # the branch moved: past the commit point, whatever failed after it
            run.committed = True
            run.unfinished = "the keep is committed but its journal could not be written"
        raise
    faults.point("after_ref_update")
    try:
        staged.apply(cand.start_state, cand.frozen)
    except OSError as exc:
        # Past the commit point the keep is the truth: the next run finishes it from the
        # journal (this run's marker stays, so its recovery finds it).
        run.unfinished = f"the keep is committed but could not be written out ({exc})"
        raise
    run.journal.write("synced")
    faults.point("after_sync")


def trailers(task_id: str, run_id: str, score: float | None,
             baseline: float | None) -> str:
    return (f"Loopengine-Task: {task_id}\n"
            f"Loopengine-Run: {run_id}\n"
            f"Loopengine-Score: {decide_mod.fmt(score)}\n"
            f"Loopengine-Baseline: {decide_mod.fmt(baseline)}\n")


def commit_message(run: Ledger, cand: Candidate) -> str:
    assert run.decision is not None
    base = run.baseline.score if run.baseline else None
    reason = run.decision.reason
    carried = ""
    if run.uncommitted:
        carried = (f"This commit also carries {run.uncommitted}: they were in the "
                   "working tree, uncommitted, when the run started, and the candidate "
                   "was made on top of them.\n\n")
    return (
        f"loopengine({cand.task.id}): keep {decide_mod.fmt(run.score)}\n\n"
        f"{reason}\n{cand.stats.summary}\n\n{carried}"
        + trailers(cand.task.id, run.run_id, run.score, base)
    )
