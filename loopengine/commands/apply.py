"""``loopengine show RUN_ID --apply``: propose a saved candidate again, as a new run.

The candidate is read from its ref (``refs/loopengine/<task_id>/<run_id>``) as the diff
against its parent, with full blob ids, and handed to ``run`` as a patch: when the
baseline has moved on since, it is applied three-way onto the current one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from loopengine import git
from loopengine.campaign import refs
from loopengine.commands import CommandError
from loopengine.commands.show import resolve_run


def find_ref(root: Path, run_id: str) -> refs.CandidateRef:
    repo = git.repo_info(root)
    found = [r for r in refs.list_refs(repo) if r.run_id == run_id]
    if not found:
        raise CommandError(f"run {run_id} has no saved candidate: only a candidate that got "
                           "past its mutator in a git repository is saved under "
                           "refs/loopengine/, and `gc` prunes old discards and crashes")
    return found[0]


def task_file(root: Path, task_id: str, given: str | None) -> str:
    if given is not None:
        return given
    from loopengine.commands.status import load_tasks

    tasks, _errors = load_tasks(root)
    if task_id not in tasks:
        raise CommandError(f"no task file with id {task_id} under tasks/*/task.yaml; "
                           "name it with --task")
    return str(tasks[task_id].path)


def apply(root: Path, wanted: str, *, task_path: str | None, verbose: bool) -> int:
    from loopengine.commands.run import run

    run_id = resolve_run(root, wanted).name
    ref = find_ref(root, run_id)
    path = task_file(root, ref.task_id, task_path)
    repo = git.repo_info(root)
    patch = git.run(repo.ctx, "diff", "--binary", "--full-index", "--no-color",
                    "--no-ext-diff", "--no-renames", f"{ref.commit}^", ref.commit, "--").stdout
    with tempfile.TemporaryDirectory(prefix="loopengine-apply-") as tmp:
        patch_file = Path(tmp) / f"{run_id}.patch"
        patch_file.write_bytes(patch)
        return run(path, root, patch_file, False, verbose)
