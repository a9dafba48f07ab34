"""``loopengine verify COMMIT``: does a keep still beat its parent?

A fresh sandbox holds the keep commit; the parent's artifact blobs and the commit's are
swapped in turn, so the two are measured interleaved (parent, commit, parent, commit ...)
with the task's runner, scorer, ``repeats`` and ``confidence``, exactly as a run with
``remeasure_baseline`` would.  The task file is read from the commit: that is the
evaluation the keep was made under.  The keep reproduces when that measurement would
keep it again.

Exit status: 0 when it reproduces, 1 when it does not, 2 when it could not be measured
(not a keep commit, no such task, a step crashed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import yaml

from loopengine import diff, fingerprint, git, measure, sandbox, stats
from loopengine.commands import CommandError
from loopengine.commands.calibrate import session, steps
from loopengine.commands.history import FORMAT, Keep, _parse
from loopengine.decide import Look, check_constraints, fmt
from loopengine.errors import TaskError
from loopengine.progress import Reporter
from loopengine.results import run_dir
from loopengine.task import Task, load_task, match_artifact

REPRODUCES, DIFFERS, UNVERIFIED = 0, 1, 2


def verify(root: Path, rev: str, task_path: str | None, reporter: Reporter) -> int:
    repo = git.repo_info(root)
    if not repo.is_git or repo.head is None:
        raise CommandError(f"{root} is not a git repository with commits: verify re-measures "
                           "keep commits")
    commit = _resolve(repo, rev)
    keep = _keep(repo, commit, rev)
    parent = _resolve(repo, f"{commit}^", what=f"{rev} has no parent to compare with")
    rel, committed = task_path_in(repo, commit, keep.task, task_path)
    notes: list[str] = []
    overlay: list[str] = []
    if not committed:
        # `init`, then `run`, with the task folder never committed: the evaluation the keep
        # was made under is the working tree's.
        overlay = _uncommitted_evaluation(repo, rel)
        notes.append(f"the task file {rel} is not in {commit[:12]}: the task and your "
                     "uncommitted files (artifacts aside) come from the working tree")
    recorded = _recorded(root, keep.run)
    with session(root, None, at=commit, reporter=reporter,
                 at_overlay=overlay) as it:
        assert it.sb is not None
        try:
            task = load_task(it.sb.tree / rel, it.sb.tree)
        except TaskError as exc:
            raise CommandError(str(exc).replace(str(it.sb.tree / rel), rel)) from None
        it.task = task
        runner = steps(it, task, time.monotonic() + task.max_seconds)
        end = git.out(repo.ctx, "rev-parse", f"{commit}^{{tree}}")
        start = git.out(repo.ctx, "rev-parse", f"{parent}^{{tree}}")
        before = _judged_against(it.sb, end, root, keep.run)
        if before is not None and before != start:
            start = before
            notes.append(f"the baseline is {commit[:12]} without its candidate patch "
                         f"(work/runs/{keep.run}/candidate.patch): the keep was measured "
                         "against uncommitted edits the parent does not hold")
        changes = diff.read_diff(it.sb.ctx, start, end).files
        strays = [f.path for f in changes if not match_artifact(task, f.path)]
        if strays:
            raise CommandError(f"{rev} changes files that are not artifacts of task "
                               f"{task.id}: {', '.join(strays[:5])}")
        fp = fingerprint.compute(task, it.sb.ctx, it.sb.start_tree)
        evaluate = measure.Evaluator(task, it.sb, changes, runner.run, runner.parse_score,
                                     log_dir=it.run_dir, phase=reporter.phase)
        m = measure.Measurement()
        measure.measure(task, evaluate, measure.Plan("remeasured"), m, has_change=True,
                        time_left=lambda: runner.deadline - time.monotonic(), paired=True)
    click.echo(report(keep, task, m, fp, recorded))
    for note in notes:
        click.echo(f"note: {note}")
    broken = m.stop or check_constraints(task.constraints, m.metrics)
    if broken is not None:
        if broken.status == "crash":
            raise CommandError(broken.reason)
        click.echo(f"does not reproduce: {broken.reason}")
        return DIFFERS
    return REPRODUCES if m.look is not None and m.look.state == "keep" else DIFFERS


def _uncommitted_evaluation(repo: git.RepoInfo, rel: str) -> list[str]:
    """The working tree's uncommitted paths, artifacts aside, for a task not in the commit."""
    try:
        task = load_task(repo.root / rel, repo.root)
    except TaskError as exc:
        raise CommandError(str(exc).replace(str(repo.root / rel), rel)) from None
    return [path for _, path in sandbox.main_status(repo) if not match_artifact(task, path)]


def _judged_against(sb: sandbox.Sandbox, end: str, root: Path, run_id: str) -> str | None:
    """The tree the keep was measured against: the commit's tree with the run's candidate
    patch taken back out, when the run folder still has it (None otherwise)."""
    patch = run_dir(root, run_id) / "candidate.patch"
    if not patch.is_file():
        return None
    ctx = sb.ctx.with_index(sb.index("judged"))
    git.run(ctx, "read-tree", end)
    back = git.run(ctx, "apply", "--cached", "-R", "--whitespace=nowarn", "--", str(patch),
                   check=False)
    if back.returncode != 0:
        return None
    return git.out(ctx, "write-tree")


def _resolve(repo: git.RepoInfo, rev: str, what: str | None = None) -> str:
    proc = git.run(repo.ctx, "rev-parse", "-q", "--verify", "--end-of-options",
                   f"{rev}^{{commit}}", check=False)
    if proc.returncode != 0:
        raise CommandError(what or f"{rev!r} is not a commit")
    return proc.stdout.decode().strip()


def _keep(repo: git.RepoInfo, commit: str, rev: str) -> Keep:
    data = git.run(repo.ctx, "log", "-1", "-z", f"--format={FORMAT}", "--encoding=UTF-8",
                   "--no-show-signature", commit, "--").stdout.decode("utf-8", "replace")
    keep = _parse(data.strip("\0"))
    if keep is None:
        raise CommandError(f"{rev} is not a loopengine keep commit (it has no "
                           "Loopengine-Task and Loopengine-Run trailers)")
    return keep


def task_path_in(repo: git.RepoInfo, commit: str, task_id: str,
                 given: str | None) -> tuple[str, bool]:
    """The repo-relative path of the task file, and whether the commit holds it:
    ``--task`` (relative to the current directory), or the file with the keep's task id,
    in the commit or else among the working tree's uncommitted files."""
    if given is not None:
        path = Path(given).resolve()
        try:
            rel = path.relative_to(repo.root.resolve()).as_posix()
        except ValueError:
            raise CommandError(f"{given}: the task file must be inside the repository "
                               f"{repo.root} (a relative --task is read from the current "
                               f"directory, {Path.cwd()})") from None
        if _in_commit(repo, commit, rel):
            return rel, True
        if path.is_file():
            return rel, False
        raise CommandError(f"{given}: no such task file in {commit[:12]} nor in the working "
                           f"tree (a relative --task is read from the current directory, "
                           f"{Path.cwd()})")
    names = git.split_z(git.run(repo.ctx, "ls-tree", "-r", "-z", "--name-only", commit).stdout)
    found = [name for name in names if _is_task(repo, f"{commit}:{name}", name, task_id)]
    if not found:
        uncommitted = [path for _, path in sandbox.main_status(repo)]
        found = [name for name in uncommitted
                 if (repo.root / name).is_file() and _is_task(repo, None, name, task_id)]
        if len(found) == 1:
            return found[0], False
    if len(found) != 1:
        how = "no task file" if not found else f"{len(found)} task files ({', '.join(found)})"
        raise CommandError(f"{how} with id {task_id!r} in {commit[:12]} or the working tree; "
                           "name it with --task")
    return found[0], True


def _in_commit(repo: git.RepoInfo, commit: str, rel: str) -> bool:
    return git.run(repo.ctx, "cat-file", "-e", f"{commit}:{rel}", check=False).returncode == 0


def _is_task(repo: git.RepoInfo, blob: str | None, name: str, task_id: str) -> bool:
    """Whether ``name`` (the blob ``blob``, or the working tree's file) is a task file
    with this id."""
    if not name.endswith((".yaml", ".yml")) or name.split("/")[0] == "work":
        return False
    if blob is not None:
        text = git.run(repo.ctx, "cat-file", "blob", blob, check=False).stdout
    else:
        try:
            text = (repo.root / name).read_bytes()
        except OSError:
            return False
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and data.get("id") == task_id and "runner" in data


def _recorded(root: Path, run_id: str) -> dict[str, Any]:
    try:
        data = json.loads((run_dir(root, run_id) / "record.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def report(keep: Keep, task: Task, m: measure.Measurement, fp: str,
           recorded: dict[str, Any]) -> str:
    lines = [f"keep {keep.commit[:12]} (task {keep.task}, run {keep.run}): recorded "
             f"{keep.baseline_text or 'no baseline'} -> {keep.score_text}"
             + ("" if keep.delta is None else f" (improvement {keep.delta:.6g})")]
    if recorded.get("fingerprint"):
        same = recorded["fingerprint"] == fp
        lines.append("evaluation fingerprint: " + ("the same as recorded" if same else
                     "differs from the recorded one: the evaluation changed since the keep"))
    lines.append(f"re-measured, parent and commit interleaved ({' '.join(m.order)}):")
    lines.append(f"  parent {_scores(m.baseline)}")
    lines.append(f"  commit {_scores(m.candidate)}")
    look: Look | None = m.look
    if look is not None:
        verdict = "reproduces" if look.state == "keep" else "does not reproduce"
        lines.append(f"{verdict}: {look.reason}")
    return "\n".join(lines)


def _scores(scores: list[float]) -> str:
    if not scores:
        return "not measured"
    runs = "1 run" if len(scores) == 1 else f"{len(scores)} runs"
    return f"{fmt(stats.mean(scores))} ({runs}: {', '.join(f'{s:.6g}' for s in scores)})"
