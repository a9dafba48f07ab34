"""Stage one: sandbox, mutator (or patch), validation -> a frozen :class:`Candidate`.

Reads the main tree (its state, the stored baseline) but never writes to it.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from loopengine import decide as decide_mod
from loopengine import diff as diff_mod
from loopengine import executors, faults, fingerprint, git, isolation, pool, recovery, sandbox, sync
from loopengine import measure as measure_mod
from loopengine import patch as patch_mod
from loopengine.errors import SandboxError
from loopengine.iteration.common import Candidate, Ledger, StepCrash, Steps, Verdict
from loopengine.process import StepResult, log_tail
from loopengine.results import load_baseline, require_workspace
from loopengine.task import load_task

_NESTED_NO_COMMIT = re.compile(r"error: '([^\n]+?)' does not have a commit checked out")


def prepare(run: Ledger, task_path: str, *, patch_file: Path | None = None,
            keep_sandbox: bool = False, env: dict[str, str] | None = None) -> Candidate:
    """Make the candidate; a :class:`Verdict` or :class:`StepCrash` ends the iteration."""
    assert run.guard is not None
    run.guard.raise_pending()  # a signal that came while Python was starting
    require_workspace(run.root)  # work/ a file, a dangling link: one line, not a traceback
    run.alive.claim()
    recovery.clean_leftovers(run.root, run.run_id)
    run.task = task = load_task(task_path, run.root)
    run.extra["executor"] = task.executor.kind
    executors.check_available(task)  # before anything is made: a config error
    run.alive.note_task(task.id, task.results_path,
                        isolation.task_mode(task, mutator=patch_file is None))
    run.deadline = run.t0 + task.max_seconds
    patch_input = None
    run.patched = patch_file is not None
    if patch_file is not None:
        # The agent's patch, read once into the run folder: git only reads that copy.
        patch_input = patch_mod.read(patch_file, run.run_dir / "input.patch",
                                     timeout=run.deadline - time.monotonic())
    run.repo = git.repo_info(run.root)
    if not keep_sandbox:  # a kept sandbox is never a pool member
        # With sandbox.reuse, start resetting a pool member while the main tree is read.
        run.reserved = pool.reserve(run.repo, task.id, reuse=task.sandbox_reuse)
    overlay = check_repo_state(run)
    snapshot_baseline(run)
    make_sandbox(run, overlay, keep_sandbox)
    choose_baseline(run)
    faults.point("after_sandbox")
    assert run.sb is not None
    steps = run.steps = _steps(run, env or {})
    if patch_file is not None:
        assert patch_input is not None
        apply_patch(run, patch_file, patch_input)
    else:
        steps.run("mutator", task.mutator)
    faults.point("after_mutator")
    tree = validate(run)
    faults.point("after_validation")
    assert run.plan is not None
    run.candidate = Candidate(
        run_id=run.run_id, task=task, sandbox=run.sb, start_commit=run.sb.head, tree=tree,
        stats=run.stats, frozen=dict(run.frozen), start_state=dict(run.start_state),
        stored=run.stored, baseline=run.baseline, fingerprint=run.fingerprint, plan=run.plan)
    return run.candidate


def _steps(run: Ledger, env: dict[str, str]) -> Steps:
    assert run.task is not None and run.sb is not None
    return Steps(run.task, run.sb, run.run_id, run.run_dir, deadline=run.deadline,
                 report=run.report, repo=run.repo, guard=run.guard, env=env)


# -- before the sandbox ---------------------------------------------------------


def check_repo_state(run: Ledger) -> list[str]:
    """Refuse a repository mid-merge or with a half-staged artifact; list the overlay."""
    assert run.repo is not None and run.task is not None
    repo, task = run.repo, run.task
    if not repo.is_git:
        return []
    assert repo.git_dir is not None
    busy = git.operation_in_progress(repo.git_dir)
    if busy:
        raise StepCrash("sandbox", f"the repository is in the middle of {busy}; "
                        "finish or abort it first")
    # Checked with no commit yet too: the keep would overwrite the staged version.
    entries = sandbox.main_status(repo)
    for xy, path in entries:
        if xy[0] not in " ?" and xy[1] != " " and sync.match_artifact(task, path):
            raise StepCrash("sandbox", f"{path}: the artifact's staged content differs "
                            "from its working-tree content; stage or unstage it first")
    if repo.head is None:
        return []
    overlay = [path for _, path in entries]
    # An artifact that git ignores is still the user's starting point (and what the
    # keep overwrites): without it the candidate would start from nothing.
    listed = set(overlay)
    return overlay + [p for p in sync.artifact_paths(run.root, task) if p not in listed]


def snapshot_baseline(run: Ledger) -> None:
    assert run.task is not None
    run.start_state = sync.artifact_state(run.root, run.task)
    run.stored = load_baseline(run.root, run.task.id)
    if run.stored is not None and run.stored.artifacts == sync.digest(run.start_state):
        run.baseline = run.stored


def make_sandbox(run: Ledger, overlay: list[str], keep_sandbox: bool) -> None:
    assert run.repo is not None and run.task is not None
    run.report.phase("sandbox")
    if keep_sandbox:
        run.sb = sandbox.create(run.repo, run.run_id, overlay)
    else:
        run.sb = pool.take(run.repo, run.task.id, run.run_id, overlay,
                           reuse=run.task.sandbox_reuse, reserved=run.reserved)
    run.alive.note_sandbox(run.sb)


def choose_baseline(run: Ledger) -> None:
    """The stored baseline only if this very evaluation measured it; else measure again."""
    assert run.task is not None and run.sb is not None
    run.fingerprint = fingerprint.compute(run.task, run.sb.ctx, run.sb.start_tree)
    missing = measure_mod.missing_artifacts(run.task, run.start_state)
    run.plan = measure_mod.plan(run.task, run.baseline, run.fingerprint, missing)
    if run.plan.source != "stored":
        run.baseline = None  # never compared: it is measured again, or there is none
    if run.plan.why:
        run.report.info(run.plan.why)


# -- the candidate ----------------------------------------------------------------


def apply_patch(run: Ledger, given: Path, patch_input: Path) -> None:
    """Apply the patch read into the run folder (three-way onto a newer baseline)."""
    assert run.sb is not None
    run.report.step_started("mutator")
    started = time.monotonic()
    log = run.run_dir / "mutator.log"
    if patch_mod.is_empty(patch_input):
        applied = patch_mod.Applied(True, "an empty patch: a candidate with no change\n")
    else:
        scratch = run.sb.index("apply")
        shutil.copy2(run.sb.start_index, scratch)  # copy2: see sandbox._create_worktree
        applied = patch_mod.apply(git.Context(run.sb.tree, git_dir=run.sb.tree / ".git",
                                              work_tree=run.sb.tree),
                                  patch_input, index=scratch)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ git apply {given}\n{applied.output}")
    run.report.step_finished("mutator", StepResult(
        "mutator", 0 if applied.ok else 1, False, time.monotonic() - started, log))
    if applied.conflicts:
        found = [diff_mod.violation("patch_conflict", path, "applies to the current "
                                    "baseline", "conflict") for path in applied.conflicts]
        raise Verdict(decide_mod.Decision("discard",
                                          patch_mod.conflict_reason(applied.conflicts),
                                          violations=found))
    if not applied.ok:
        raise StepCrash("mutator", f"the patch {patch_mod.label(given)} does not apply: "
                        f"{applied.reason}", log_tail(log))
    if applied.three_way:
        run.report.info("the patch was made against an older version of the artifacts; "
                        "it was applied with a three-way merge")


def validate(run: Ledger) -> str:
    """Read the real diff; a violation ends the iteration as a discard.  The tree."""
    assert run.sb is not None and run.task is not None
    run.report.phase("validate")
    # What the mutator left in work/, .venv/ or .pytest_cache/ is not validated, so the
    # runner and scorer must not see it (a planted .venv/bin/python could fake a score).
    sandbox.clear_runtime(run.sb.tree, sandbox.project_venv(run.root))
    try:
        cand_tree = sandbox.snapshot(run.sb, "candidate")
    except SandboxError as exc:
        # `git add` refuses a nested repository with no commit: a discard naming it,
        # like any nested repository, not a crash.
        nested = _NESTED_NO_COMMIT.findall(str(exc))
        if not nested:
            raise
        found = [diff_mod.violation("submodule", path.rstrip("/"), "regular files only",
                                    "git repository") for path in nested]
        raise Verdict(decide_mod.Decision("discard", diff_mod.describe(found),
                                          violations=found)) from exc
    patch = run.run_dir / "candidate.patch"
    # Streamed to the file: a large file the mutator wrote is never held in memory.
    run.stats = diff_mod.read_diff(run.sb.ctx, run.sb.start_tree, cand_tree, patch)
    run.validated = True
    if not run.stats.files:
        patch.unlink(missing_ok=True)
    found = diff_mod.violations(run.task, run.stats)
    if found:
        reason = diff_mod.describe(found)
        hint, nothing_matches = diff_mod.include_problem(run.task, run.sb.ctx,
                                                         run.sb.start_tree, found)
        if nothing_matches:  # no artifact at all: the task is wrong, not the candidate
            raise StepCrash("config", f"{hint}; the candidate changed "
                            f"{', '.join(sorted({str(v['path']) for v in found if v['path']}))}")
        if hint:
            reason = f"{reason}; {hint}"
        raise Verdict(decide_mod.Decision("discard", reason, violations=found))
    # What is scored is what the keep writes: the candidate as git checks it out in the
    # user's checkout (line endings under core.autocrlf, filters, ident).
    sync.as_checked_out(run.sb.tree, run.sb.ctx, run.stats.files)
    run.frozen = sync.artifact_state(run.sb.tree, run.task)
    return cand_tree
