"""The keep's journal, ``work/runs/<run_id>/journal.jsonl``, and finishing a keep from it.

A keep is one transaction (``sync.py``): everything that can fail is prepared first (the
kept files written beside their targets, the user's index locked and the new index built
beside it), then the commit point, then renames that cannot fail.  Before the first
write the engine writes down all that is needed to finish the keep without the sandbox
(``intent``), and a line after each step.  A run killed with SIGKILL anywhere in between
is finished by the next run (:func:`complete`, called by recovery):

- before the commit point nothing has reached the user: recovery removes what was
  prepared (the files beside the targets, the new index, the index lock this run holds)
  and appends a ``crash`` record;
- after it the keep is rolled forward: prepared files go where the tree still holds the
  pre-keep content, the new index replaces the index, the baseline is stored if no other
  keep stored one since, and the journaled ``keep`` record is appended.

The commit point is the branch update (``update-ref``) when the keep makes a commit, and
the ``prepared`` line when it does not (``commit_on_keep: false``, no git).  Every step of
the roll-forward looks at what is on disk, so a recovery that is itself killed is simply
run again by the next run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from loopengine import faults, git, sync
from loopengine.diff import FileChange
from loopengine.paths import write_problem
from loopengine.results import Baseline, Record, load_baseline, locked, store_baseline

NAME = "journal.jsonl"


class Journal:
    """Appends one fsynced JSON line per step of a keep."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / NAME

    def write(self, step: str, **data: Any) -> None:
        # ASCII: a path with a byte that is not UTF-8, or a lone surrogate, reads back
        # exactly (as a \\udcff escape) instead of making the line unwritable.
        line = json.dumps({"step": step, **data}, ensure_ascii=True, allow_nan=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def intent(
        self, *, record: Record, changes: list[FileChange], start: dict[str, str],
        frozen: dict[str, str], index: dict[str, str | None], stored: Baseline | None,
        baseline: Baseline, objects: Path | None, commits: bool,
    ) -> None:
        self.write(
            "intent",
            record=record.to_dict(),
            changes=[dataclasses.asdict(f) for f in changes],
            start=start,
            frozen=frozen,
            index=index,
            stored=stored.to_dict() if stored else None,
            baseline=baseline.to_dict(),
            objects=str(objects) if objects else None,
            commits=commits,
        )


def read(folder: Path) -> list[dict[str, Any]]:
    """The journal's lines; a torn last line (the engine died writing it) is left out."""
    try:
        raw = (folder / NAME).read_bytes()
    except FileNotFoundError:
        return []
    lines = []
    for line in raw.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            lines.append(item)
    return lines


def index_entries(repo: git.RepoInfo, paths: list[str]) -> dict[str, str | None]:
    """``path -> "mode sha"`` of the user's index (None: not in it), for ``paths``."""
    found: dict[str, str | None] = dict.fromkeys(paths)
    if not paths or not repo.is_git:
        return found
    data = git.run(repo.ctx, "--literal-pathspecs", "ls-files", "-s", "-z", "--",
                   *paths).stdout
    for item in data.split(b"\0"):
        meta, _, path = item.partition(b"\t")
        if path:
            mode, sha, _stage = meta.decode().split(" ")
            found[path.decode("utf-8", "surrogateescape")] = f"{mode} {sha}"
    return found


# ---------------------------------------------------------------------------
# Recovery


def complete(root: Path, folder: Path, recovered_by: str) -> Record | None:
    """Finish the keep a dead run journaled; its record, or None if there is none to finish
    (no intent, or killed before the commit point: nothing reached the user)."""
    lines = read(folder)
    intent = next((x for x in lines if x.get("step") == "intent"), None)
    if intent is None:
        return None
    finished = finish(root, folder, lines)
    if finished is None:
        return None
    commit, notes = finished
    data = dict(intent["record"])
    data["commit"] = commit
    data["ref"] = saved_ref(root, str(data.get("task_id")), folder.name)
    note = f"the engine was killed after the keep was committed; run {recovered_by} finished it"
    if notes:
        note += f"; {', '.join(notes)} changed meanwhile and kept their content"
    data["reason"] = f"{data['reason']} ({note})"
    return _record(data)


def finish(root: Path, folder: Path, lines: list[dict[str, Any]] | None = None
           ) -> tuple[str | None, list[str]] | None:
    """Roll a journaled keep forward past its commit point, or clean up what it prepared
    before it.  ``(commit, paths the user changed meanwhile)``, or None when the keep never
    reached its commit point.  Idempotent: a recovery killed half-way is run again."""
    lines = read(folder) if lines is None else lines
    intent = next((x for x in lines if x.get("step") == "intent"), None)
    if intent is None:
        return None
    steps = {x.get("step") for x in lines}
    repo = git.repo_info(root)
    changes = trusted_changes(root, intent["changes"])
    run_id = str(intent["record"]["run_id"])
    if run_id != folder.name:
        raise ValueError(f"the journal names run {run_id!r}, not {folder.name!r}")
    task_id = intent["record"]["task_id"]
    if not isinstance(task_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", task_id):
        raise ValueError(f"the journal names no valid task id ({task_id!r})")
    staged = sync.staged_for(root, repo, run_id, changes, index=bool(intent.get("commits")))
    commit = _committed(repo, intent, lines)
    if commit is False:
        staged.abandon()
        return None
    notes: list[str] = []
    with locked(root):
        if "synced" not in steps:
            notes = _roll_files_forward(intent, staged)
            faults.point("recovery_after_files")
        if "baseline" not in steps:
            stored = load_baseline(root, str(intent["record"]["task_id"]))
            if (stored.to_dict() if stored else None) == intent["stored"]:
                store_baseline(root, str(intent["record"]["task_id"]),
                               _baseline(intent["baseline"]))
        Journal(folder).write("baseline", by="recovery")
    return (commit or None), notes


def saved_ref(root: Path, task_id: str | None, run_id: str) -> str | None:
    """The dead run's candidate ref, if it saved one before it was killed."""
    if not task_id or not re.fullmatch(r"[A-Za-z0-9._-]+", task_id):
        return None
    name = f"refs/loopengine/{task_id}/{run_id}"
    proc = git.run(git.Context(root), "rev-parse", "-q", "--verify", name, check=False)
    return name if proc.returncode == 0 else None


def trusted_changes(root: Path, items: Any) -> list[FileChange]:
    """The journal's changes, read as strictly as a task file: ``work/`` is writable by a
    step, so a journal could name any path.  Only paths an artifact could have: relative,
    inside the repository after symlinks, never in ``.git/``, ``.venv/`` or ``work/``."""
    if not isinstance(items, list):
        raise ValueError("the journal's changes are not a list")
    changes = []
    for item in items:
        f = FileChange(**item)
        problem = write_problem(root, f.path) if isinstance(f.path, str) else "is not a path"
        if problem == "is an executable file" and f.new_mode == "100755":
            problem = None
        top = f.path.split("/", 1)[0] if isinstance(f.path, str) else ""
        if problem is None and top in ("work", ".git", ".venv", ".pytest_cache"):
            problem = f"is inside {top}/"
        if problem is not None:
            raise ValueError(f"the journal names {f.path!r}, which {problem}")
        for sha in (f.old_sha, f.new_sha):
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
                raise ValueError(f"the journal names no object ({sha!r})")
        changes.append(f)
    return changes


def _committed(repo: git.RepoInfo, intent: dict[str, Any], lines: list[dict[str, Any]]
               ) -> str | bool | None:
    """The keep commit (None: the keep makes none) once past the commit point; else False."""
    steps = {x.get("step") for x in lines}
    updated = [x for x in lines if x.get("step") == "ref_updated"]
    if updated:
        return updated[-1].get("commit")
    if not intent.get("commits"):
        # No commit: the ``prepared`` line is the commit point (an intent of a keep with
        # nothing to write, or a discard storing a baseline, has nothing to prepare).
        return None if ("prepared" in steps or not intent["changes"]) else False
    prepared = [x for x in lines if x.get("step") == "commit"]
    if not prepared or not repo.is_git:
        return False
    commit, ref = str(prepared[-1]["commit"]), str(prepared[-1]["ref"])
    # The branch holds the commit, or a later keep landed on top of it.
    proc = git.run(repo.ctx, "merge-base", "--is-ancestor", commit, ref, check=False)
    return commit if proc.returncode == 0 else False


def _roll_files_forward(intent: dict[str, Any], staged: sync.Staged) -> list[str]:
    """Put the prepared files and index in place where the tree still holds the pre-keep
    content; the paths the user changed meanwhile (left alone)."""
    return staged.apply(dict(intent["start"]), dict(intent["frozen"]))


def _baseline(data: dict[str, Any]) -> Baseline:
    known = {f.name for f in dataclasses.fields(Baseline)}
    values = {k: v for k, v in data.items() if k in known}
    if "scores" in values:
        values["scores"] = tuple(values["scores"])
    return Baseline(**values)


def _record(data: dict[str, Any]) -> Record:
    known = {f.name for f in dataclasses.fields(Record)} - {"extra"}
    return Record(**{k: v for k, v in data.items() if k in known},
                  extra={k: v for k, v in data.items() if k not in known})
