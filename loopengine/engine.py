"""``run_iteration()``: the only place that knows the order of the steps.

    load task -> snapshot baseline -> sandbox -> mutator (or patch) -> validate
    -> runner -> scorer -> decide -> (keep: sync + commit) -> remove sandbox -> record
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopengine import decide as decide_mod
from loopengine import diff as diff_mod
from loopengine import (
    faults,
    fingerprint,
    git,
    journal,
    pool,
    recovery,
    sandbox,
    score,
    stats,
    sync,
    tripwire,
)
from loopengine import measure as measure_mod
from loopengine import patch as patch_mod
from loopengine.errors import Interrupted, LoopError, SandboxError
from loopengine.process import StepResult, log_tail, run_step, step_env
from loopengine.progress import Reporter
from loopengine.results import (
    DEFAULT_RESULTS,
    Baseline,
    Record,
    iso_utc,
    load_baseline,
    locked,
    new_run_id,
    run_dir,
    save_record,
    store_baseline,
)
from loopengine.signals import SignalGuard
from loopengine.task import Step, Task, load_task


@dataclass(frozen=True)
class Options:
    task_path: str
    repo_root: Path
    patch_file: Path | None = None
    keep_sandbox: bool = False
    reporter: Reporter = field(default_factory=Reporter)


@dataclass(frozen=True)
class Outcome:
    record: Record
    exit_code: int
    message: str | None = None  # one line for stderr, for crashes the user must fix


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


def run_iteration(opts: Options) -> Outcome:
    it = _Iteration(opts)
    with SignalGuard() as guard:
        it.guard = guard
        try:
            it.iterate()
        except Verdict as v:
            it.decision = v.decision
        except Interrupted as exc:
            it.crash("interrupted", f"interrupted by {guard.name(exc.signum)}")
        except StepCrash as exc:
            it.crash(exc.crash_kind, str(exc), exc.tail)
        except LoopError as exc:
            it.crash(exc.crash_kind, str(exc))
            it.message = str(exc)
        except Exception as exc:
            it.crash("internal", f"internal error: {type(exc).__name__}: {exc}")
            it.internal_traceback = traceback.format_exc()
        finally:
            with guard.deferred():
                it.cleanup()
        with guard.deferred():
            record = it.finish()
        signum = guard.received
    if signum is not None:
        return Outcome(record, 128 + signum, it.message)
    return Outcome(record, 1 if record.status == "crash" else 0, it.message)


class _Iteration:
    """The state of one iteration; methods in the order they run."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.root = opts.repo_root
        self.report = opts.reporter
        self.started = dt.datetime.now(dt.UTC)
        self.t0 = time.monotonic()
        self.run_id = new_run_id(self.started)
        self.run_dir = run_dir(self.root, self.run_id)
        self.guard: SignalGuard | None = None
        self.task: Task | None = None
        self.repo: git.RepoInfo | None = None
        self.sb: sandbox.Sandbox | None = None
        self.reserved: pool.Reservation | None = None
        self.deadline = self.t0
        self.stats: diff_mod.DiffStats = diff_mod.EMPTY
        self.decision: decide_mod.Decision | None = None
        self.score: float | None = None
        self.metrics: dict[str, Any] = {}
        self.baseline: Baseline | None = None
        self.stored: Baseline | None = None
        self.start_state: dict[str, str] = {}
        self.commit: str | None = None
        self.tail: str | None = None
        self.message: str | None = None
        self.internal_traceback: str | None = None
        # On every record: lines of the user's own that a keep commit carried.
        self.extra: dict[str, Any] = {"uncommitted_lines": 0}
        self.uncommitted = ""
        self.frozen: dict[str, str] = {}
        self.fingerprint: str | None = None
        self.plan: measure_mod.Plan | None = None
        self.measured: measure_mod.Measurement | None = None
        self.tripwire: tripwire.Tripwire | None = None
        self.patch_input: Path | None = None
        self.journal = journal.Journal(self.run_dir)
        self.alive = recovery.Alive(self.root, self.run_id)

    # -- the order of the steps -------------------------------------------------

    def iterate(self) -> None:
        assert self.guard is not None
        self.guard.raise_pending()  # a signal that came while Python was starting
        self.alive.claim()
        recovery.clean_leftovers(self.root, self.run_id)
        self.task = load_task(self.opts.task_path, self.root)
        self.alive.note_task(self.task.id, self.task.results_path)
        self.deadline = self.t0 + self.task.max_seconds
        if self.opts.patch_file is not None:
            self.read_patch()
        self.repo = git.repo_info(self.root)
        self.reserve_sandbox()
        overlay = self.check_repo_state()
        self.snapshot_baseline()
        self.make_sandbox(overlay)
        self.choose_baseline()
        faults.point("after_sandbox")
        if self.opts.patch_file is not None:
            self.apply_patch()
        else:
            self.run("mutator", self.task.mutator)
        faults.point("after_mutator")
        frozen = self.validate()
        faults.point("after_validation")
        self.measure()
        self.recheck_artifacts(frozen)
        self.decision = decide_mod.decide(
            score=self.score,
            baseline=self.baseline.score if self.baseline else None,
            direction=self.task.direction,
            min_improvement=self.task.policy.min_improvement,
            constraints=self.task.constraints,
            metrics=self.metrics,
            has_change=bool(self.stats.files),
            keep_when_no_baseline=self.task.policy.keep_when_no_baseline,
            verdict=self.measured.look if self.measured else None,
        )
        if self.decision.status == "crash":
            raise StepCrash(self.decision.crash_kind or "scorer", self.decision.reason)
        assert self.guard is not None
        with self.guard.deferred():
            self.conclude()

    # -- before the sandbox -----------------------------------------------------

    def check_repo_state(self) -> list[str]:
        """Refuse a repository mid-merge or with a half-staged artifact; list the overlay."""
        assert self.repo is not None and self.task is not None
        if not self.repo.is_git:
            return []
        assert self.repo.git_dir is not None
        busy = git.operation_in_progress(self.repo.git_dir)
        if busy:
            raise StepCrash("sandbox", f"the repository is in the middle of {busy}; "
                            "finish or abort it first")
        # Checked with no commit yet too: the keep would overwrite the staged version.
        entries = sandbox.main_status(self.repo)
        for xy, path in entries:
            if xy[0] not in " ?" and xy[1] != " " and sync.match_artifact(self.task, path):
                raise StepCrash("sandbox", f"{path}: the artifact's staged content differs "
                                "from its working-tree content; stage or unstage it first")
        if self.repo.head is None:
            return []
        overlay = [path for _, path in entries]
        # An artifact that git ignores is still the user's starting point (and what the
        # keep overwrites): without it the candidate would start from nothing.
        listed = set(overlay)
        return overlay + [p for p in sync.artifact_paths(self.root, self.task)
                          if p not in listed]

    def snapshot_baseline(self) -> None:
        assert self.task is not None
        self.start_state = sync.artifact_state(self.root, self.task)
        self.stored = load_baseline(self.root, self.task.id)
        if self.stored is not None and self.stored.artifacts == sync.digest(self.start_state):
            self.baseline = self.stored

    def choose_baseline(self) -> None:
        """The stored baseline only if this very evaluation measured it; else measure again."""
        assert self.task is not None and self.sb is not None
        self.fingerprint = fingerprint.compute(self.task, self.sb.ctx, self.sb.start_tree)
        self.plan = measure_mod.plan(self.task, self.baseline, self.fingerprint)
        if self.plan.source != "stored":
            self.baseline = None  # never compared: it is measured again, or there is none
        if self.plan.why:
            self.report.info(f"the baseline is measured again: {self.plan.why}")

    def reserve_sandbox(self) -> None:
        """With sandbox.reuse, start resetting a pool member while the main tree is read."""
        assert self.repo is not None and self.task is not None
        if not self.opts.keep_sandbox:  # a kept sandbox is never a pool member
            self.reserved = pool.reserve(self.repo, self.task.id,
                                         reuse=self.task.sandbox_reuse)

    def make_sandbox(self, overlay: list[str]) -> None:
        assert self.repo is not None and self.task is not None
        self.report.phase("sandbox")
        if self.opts.keep_sandbox:
            self.sb = sandbox.create(self.repo, self.run_id, overlay)
        else:
            self.sb = pool.take(self.repo, self.task.id, self.run_id, overlay,
                                reuse=self.task.sandbox_reuse, reserved=self.reserved)
        self.alive.note_sandbox(self.sb)

    # -- steps ------------------------------------------------------------------

    def run(self, name: str, step: Step, capture: bool = False) -> str:
        """Run one step in the sandbox; a crash when it fails; stdout when captured."""
        assert self.task is not None and self.sb is not None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise StepCrash("budget", f"budget.max_seconds ({self.task.max_seconds:g}s) was "
                            f"used up before the {name} could start")
        cwd = self.sb.tree / step.cwd
        if not cwd.is_dir():
            raise StepCrash("config", f"{name}.cwd: {step.cwd!r} does not exist in the sandbox")
        timeout = min(step.timeout_seconds, remaining)
        log = self.run_dir / f"{name}.log"
        out = self.run_dir / f"{name}.stdout" if capture else None
        env = step_env(os.environ, {
            "LOOPENGINE_SANDBOX": str(self.sb.tree),
            "LOOPENGINE_TASK_DIR": str(self.sb.tree / self.task.task_dir),
            "LOOPENGINE_RUN_ID": self.run_id,
            # Marks the reflog entries of what a step does to the main repository.
            "GIT_REFLOG_ACTION": tripwire.marker(self.run_id),
        })
        self.report.step_started(name)
        before = self.watch_main_repo()
        try:
            result = run_step(name, step.command, cwd=cwd, env=env, timeout=timeout,
                              log_path=log, stdout_path=out,
                              on_line=self.report.line_callback(name))
        finally:
            touched = self.restore_main_repo(before)
        self.report.step_finished(name, result)
        if touched:
            raise StepCrash(name, f"the {name} changed the main repository's git state, which "
                            f"was put back: {'; '.join(touched)}", log_tail(log))
        self.check_step(name, step, result, timeout)
        if out is None:
            return ""
        return out.read_bytes().decode("utf-8", "replace")

    def watch_main_repo(self) -> tripwire.Snapshot | None:
        """What a step could change in the shared ``.git`` by its absolute path."""
        assert self.repo is not None
        if not self.repo.is_git:
            return None
        if self.tripwire is None:
            self.tripwire = tripwire.Tripwire(self.repo, self.run_id)
        return self.tripwire.take()

    def restore_main_repo(self, before: tripwire.Snapshot | None) -> list[str]:
        if before is None or self.tripwire is None:
            return []
        assert self.guard is not None
        with self.guard.deferred():  # a ^C must not stop the repair half-way
            return self.tripwire.restore(before)

    def check_step(self, name: str, step: Step, result: StepResult, timeout: float) -> None:
        assert self.task is not None
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

    def read_patch(self) -> None:
        """The agent's patch, read once into the run folder: git only reads that copy."""
        assert self.opts.patch_file is not None
        self.patch_input = patch_mod.read(self.opts.patch_file, self.run_dir / "input.patch",
                                          timeout=self.deadline - time.monotonic())

    def apply_patch(self) -> None:
        assert self.sb is not None and self.patch_input is not None
        given = self.opts.patch_file
        assert given is not None
        self.report.step_started("mutator")
        started = time.monotonic()
        log = self.run_dir / "mutator.log"
        if patch_mod.is_empty(self.patch_input):
            applied = patch_mod.Applied(True, "an empty patch: a candidate with no change\n")
        else:
            scratch = self.sb.index("apply")
            shutil.copy2(self.sb.start_index, scratch)  # copy2: see sandbox._create_worktree
            applied = patch_mod.apply(git.Context(self.sb.tree, git_dir=self.sb.tree / ".git",
                                                  work_tree=self.sb.tree),
                                      self.patch_input, index=scratch)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ git apply {given}\n{applied.output}")
        self.report.step_finished("mutator", StepResult(
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
            self.report.info("the patch was made against an older version of the artifacts; "
                             "it was applied with a three-way merge")

    # -- validation and scoring -------------------------------------------------

    def validate(self) -> dict[str, str]:
        """Read the real diff; a violation ends the iteration as a discard."""
        assert self.sb is not None and self.task is not None
        self.report.phase("validate")
        # What the mutator left in work/, .venv/ or .pytest_cache/ is not validated, so the
        # runner and scorer must not see it (a planted .venv/bin/python could fake a score).
        sandbox.clear_runtime(self.sb.tree)
        try:
            cand_tree = sandbox.snapshot(self.sb, "candidate")
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
        self.stats = diff_mod.read_diff(self.sb.ctx, self.sb.start_tree, cand_tree)
        if self.stats.files:
            patch = self.run_dir / "candidate.patch"
            patch.write_bytes(self.stats.patch)
        found = diff_mod.violations(self.task, self.stats)
        if found:
            raise Verdict(decide_mod.Decision("discard", diff_mod.describe(found),
                                              violations=found))
        self.frozen = sync.artifact_state(self.sb.tree, self.task)
        return self.frozen

    def measure(self) -> None:
        """Runner and scorer as often as the policy asks, the baseline interleaved."""
        assert self.task is not None and self.sb is not None and self.plan is not None
        # With repeats, the step logs say which measurement each part belongs to.
        marked = self.task.policy.repeats > 1
        evaluator = measure_mod.Evaluator(
            self.task, self.sb, self.stats.files, self.run, self.parse_score,
            log_dir=self.run_dir if marked else None, phase=self.report.phase)
        self.measured = measure_mod.Measurement(baseline=list(self.plan.stored))
        try:
            measure_mod.measure(self.task, evaluator, self.plan, self.measured,
                                has_change=bool(self.stats.files),
                                time_left=lambda: self.deadline - time.monotonic())
        finally:
            self.score, self.metrics = self.measured.score, self.measured.metrics
        if self.measured.baseline and self.plan.source != "none":
            metrics = self.measured.baseline_metrics if self.measured.fresh else \
                self.baseline.metrics if self.baseline else {}
            self.baseline = Baseline(
                score=stats.mean(self.measured.baseline),
                artifacts=sync.digest(self.start_state), run_id=self.run_id,
                fingerprint=self.fingerprint, scores=tuple(self.measured.baseline),
                metrics=metrics)
        if self.measured.stop is not None:
            raise Verdict(self.measured.stop)

    def parse_score(self, stdout: str) -> tuple[float, dict[str, Any]]:
        try:
            return score.parse_output(stdout, self.task.parse)  # type: ignore[union-attr]
        except score.ScoreError as exc:
            raise StepCrash("scorer", str(exc), log_tail(self.run_dir / "scorer.log")) from exc

    def recheck_artifacts(self, frozen: dict[str, str]) -> None:
        """The runner or scorer must not have changed what was validated."""
        assert self.sb is not None and self.task is not None
        if sync.artifact_state(self.sb.tree, self.task) != frozen:
            raise Verdict(decide_mod.Decision(
                "discard", "an artifact changed after validation (by the runner or scorer); "
                "the validated candidate is not what was scored"))

    # -- decide and sync, under the lock ----------------------------------------

    def conclude(self) -> None:
        assert self.task is not None and self.decision is not None and self.score is not None
        keep = self.decision.status == "keep"
        new = self.next_baseline(keep)
        if new is None:
            return
        # A discard that only measured the baseline afresh stores it if nothing moved.
        decides = keep or self.plan is None or self.plan.source == "none"
        with locked(self.root):
            if load_baseline(self.root, self.task.id) != self.stored:
                if decides:
                    self.decision = decide_mod.Decision(
                        "discard", "baseline changed during run; another iteration kept first")
                return
            if sync.artifact_state(self.root, self.task) != self.start_state:
                if decides:
                    self.decision = decide_mod.Decision(
                        "discard", "the main tree's artifacts changed while the iteration ran")
                return
            if keep and self.stats.files:
                self.note_uncommitted()
            self.write_intent(keep)
            if keep and self.stats.files:
                self.sync()
            store_baseline(self.root, self.task.id, new)
            self.journal.write("baseline")

    def next_baseline(self, keep: bool) -> Baseline | None:
        """What this iteration stores as the baseline, if anything."""
        assert self.task is not None and self.measured is not None and self.plan is not None
        new = measure_mod.new_baseline(self.measured, self.plan, kept=keep,
                                       has_change=bool(self.stats.files))
        if new is None:
            return None
        state = self.frozen if keep and self.stats.files else self.start_state
        metrics = measure_mod.new_baseline_metrics(self.measured, kept=keep,
                                                   has_change=bool(self.stats.files))
        return Baseline(score=new[0], artifacts=sync.digest(state), run_id=self.run_id,
                        fingerprint=self.fingerprint, scores=new[1], metrics=metrics)

    def note_uncommitted(self) -> None:
        """The keep commit is HEAD plus the kept files, so it also carries the user's
        uncommitted edits of those files (the candidate was made on top of them): the
        record and the commit message say so, with the number of lines."""
        assert self.task is not None and self.repo is not None and self.decision is not None
        if not (self.task.policy.commit_on_keep and self.repo.is_git):
            return
        lines, paths = sync.uncommitted_lines(self.repo, [f.path for f in self.stats.files])
        self.extra["uncommitted_lines"] = lines
        if lines:
            self.uncommitted = (f"{lines} uncommitted line{'s' * (lines != 1)} of yours "
                                f"({', '.join(paths)})")
            self.decision = dataclasses.replace(
                self.decision, reason=f"{self.decision.reason}; the keep commit also "
                f"carries {self.uncommitted}")

    def write_intent(self, keep: bool) -> None:
        """All that recovery needs to finish this keep, written before its first write."""
        assert self.task is not None and self.repo is not None and self.sb is not None
        assert self.score is not None
        changes = list(self.stats.files) if keep else []
        commits = bool(changes) and self.task.policy.commit_on_keep and self.repo.is_git
        baseline = self.next_baseline(keep)
        assert baseline is not None
        self.journal.intent(
            record=self.build_record(),
            changes=changes,
            start=self.start_state,
            frozen=self.frozen,
            index=journal.index_entries(self.repo, [f.path for f in changes]) if commits else {},
            stored=self.stored,
            baseline=baseline,
            objects=None if self.repo.is_git else self.sb.ctx.git_dir,
            commits=commits,
        )

    def sync(self) -> None:
        assert self.task is not None and self.repo is not None and self.sb is not None
        self.report.phase("sync")
        changes = list(self.stats.files)
        sync.check_paths_inside(self.root, [f.path for f in changes])
        commit_on_keep = self.task.policy.commit_on_keep and self.repo.is_git
        if commit_on_keep:
            made = sync.make_commit(self.repo, changes, self.commit_message(),
                                    before_update=self.before_ref_update)
            if made is not None:
                self.commit = made[0]
            self.journal.write("ref_updated", commit=self.commit)  # the commit point
            faults.point("after_ref_update")
        sync.write_files(self.root, self.sb.ctx, changes)
        if commit_on_keep and self.commit is not None:
            sync.update_user_index(self.repo, changes)
        self.journal.write("synced")
        faults.point("after_sync")

    def before_ref_update(self, commit: str, ref: str) -> None:
        self.journal.write("commit", commit=commit, ref=ref)
        faults.point("before_ref_update")

    def commit_message(self) -> str:
        assert self.task is not None and self.decision is not None
        base = self.baseline.score if self.baseline else None
        reason = self.decision.reason
        carried = ""
        if self.uncommitted:
            reason = reason.split("; the keep commit also carries ", 1)[0]
            carried = (f"This commit also carries {self.uncommitted}: they were in the "
                       "working tree, uncommitted, when the run started, and the candidate "
                       "was made on top of them.\n\n")
        return (
            f"loopengine({self.task.id}): keep {decide_mod.fmt(self.score)}\n\n"
            f"{reason}\n{self.stats.summary}\n\n{carried}"
            f"Loopengine-Task: {self.task.id}\n"
            f"Loopengine-Run: {self.run_id}\n"
            f"Loopengine-Score: {decide_mod.fmt(self.score)}\n"
            f"Loopengine-Baseline: {decide_mod.fmt(base)}\n"
        )

    # -- the end ----------------------------------------------------------------

    def crash(self, kind: str, reason: str, tail: str | None = None) -> None:
        if self.commit is not None:
            return  # the keep is committed: that is the truth, whatever came after
        self.decision = decide_mod.Decision("crash", reason, crash_kind=kind)
        self.tail = tail

    def cleanup(self) -> None:
        if self.reserved is not None:
            self.reserved.cancel()  # unless the sandbox took it over
        if self.sb is None or self.repo is None:
            return
        if self.opts.keep_sandbox:
            sandbox.hand_over(self.sb)
            self.report.info(f"sandbox kept at {self.sb.tree}")
            self.alive.note_kept()
            return
        sandbox.remove(self.sb, self.repo)
        self.alive.note_removed()

    def finish(self) -> Record:
        task = self.task
        results_path = task.results_path if task else DEFAULT_RESULTS
        if self.internal_traceback:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "engine.log").write_text(self.internal_traceback)
        record = self.build_record()
        faults.point("before_record")
        warning = save_record(self.root, results_path, record)
        if warning:
            self.message = f"{self.message}; {warning}" if self.message else warning
        self.alive.release()
        self.report.finished(record)
        return record

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
                   **self.extra},
        )


_NESTED_NO_COMMIT = re.compile(r"error: '([^\n]+?)' does not have a commit checked out")
