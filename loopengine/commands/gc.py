"""``loopengine gc``: prune old discards' and crashes' refs and run folders.

Per task, the newest ``--keep-last`` discards and crashes stay; older ones lose their ref
(``refs/loopengine/<task_id>/<run_id>``) and their ``work/runs/<run_id>/`` folder.  A run
that is kept -- by its record or by its ref's ``Loopengine-Status`` -- is never pruned,
and neither is a run still in progress.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from loopengine import git
from loopengine.campaign import refs
from loopengine.results import run_dir

DEFAULT_KEEP_LAST = 100
PRUNABLE = ("discard", "crash")


def gc(root: Path, task_id: str | None, keep_last: int, as_json: bool = False) -> None:
    from loopengine.commands.status import all_records, load_tasks
    from loopengine.recovery import ACTIVE

    repo = git.repo_info(root)
    candidate_refs = refs.list_refs(repo, task_id)
    tasks, _ = load_tasks(root)
    records, _ = all_records(root, tasks.values())
    status: dict[str, set[str]] = {}
    task_of: dict[str, str] = {}
    for rec in records:
        run_id, tid = str(rec.get("run_id")), rec.get("task_id")
        if isinstance(tid, str) and (task_id is None or tid == task_id):
            status.setdefault(run_id, set()).add(str(rec.get("status")))
            task_of[run_id] = tid
    by_run = {r.run_id: r for r in candidate_refs}
    for r in candidate_refs:
        status.setdefault(r.run_id, set()).add(r.status)
        task_of.setdefault(r.run_id, r.task_id)
    active = root / ACTIVE
    per_task: dict[str, list[str]] = {}
    for run_id, seen in status.items():
        if "keep" in seen or not seen & set(PRUNABLE) or (active / run_id).exists():
            continue
        per_task.setdefault(task_of[run_id], []).append(run_id)
    pruned_refs: list[refs.CandidateRef] = []
    pruned_runs: list[str] = []
    for runs in per_task.values():
        runs.sort()
        old = runs[:-keep_last] if keep_last else runs
        for run_id in old:
            if run_id in by_run:
                pruned_refs.append(by_run[run_id])
            pruned_runs.append(run_id)
    refs.delete(repo, pruned_refs)
    folders = 0
    for run_id in pruned_runs:
        folder = run_dir(root, run_id)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            folders += 1
    if as_json:
        click.echo(json.dumps({"refs": [r.ref for r in pruned_refs], "runs": pruned_runs,
                               "keep_last": keep_last}, separators=(",", ":")))
        return
    click.echo(f"gc: pruned {len(pruned_runs)} discarded or crashed runs "
               f"({len(pruned_refs)} refs, {folders} run folders); kept the last "
               f"{keep_last} of each task and every keep")
