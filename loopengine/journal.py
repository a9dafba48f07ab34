"""The keep's journal, ``work/runs/<run_id>/journal.jsonl``, and finishing a keep from it.

A keep changes what the user sees in three places -- the branch, the artifact files with
their index entries, the baseline store -- and then writes the record.  Before the first
of them the engine writes down all that is needed to finish the keep without the sandbox
(``intent``), and a line after each step.  A run killed with SIGKILL anywhere in between
is finished by the next run (:func:`complete`, called by recovery):

- before the commit point nothing has reached the user: recovery only removes leftovers
  and appends a ``crash`` record;
- after it the keep is rolled forward: artifact files whose content is still the
  pre-keep one get the kept blobs, index entries still as they were get the kept blobs,
  the baseline is stored if no other keep stored one since, and the journaled ``keep``
  record is appended.

The commit point is the branch update (``update-ref``) when the keep makes a commit, and
the ``intent`` line itself when it does not (``commit_on_keep: false``, no git, nothing
changed): there is then no single write that decides, and the intent is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from loopengine import git, sync
from loopengine.diff import FileChange
from loopengine.results import Baseline, Record, load_baseline, locked, store_baseline

NAME = "journal.jsonl"


class Journal:
    """Appends one fsynced JSON line per step of a keep."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / NAME

    def write(self, step: str, **data: Any) -> None:
        line = json.dumps({"step": step, **data}, ensure_ascii=False, allow_nan=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape") + b"\n")
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
    steps = {x.get("step") for x in lines}
    repo = git.repo_info(root)
    commit = _committed(repo, intent, lines)
    if commit is False:
        return None
    notes = []
    with locked(root):
        if "synced" not in steps:
            notes += _roll_files_forward(root, repo, intent)
        if "baseline" not in steps:
            stored = load_baseline(root, str(intent["record"]["task_id"]))
            if (stored.to_dict() if stored else None) == intent["stored"]:
                store_baseline(root, str(intent["record"]["task_id"]),
                               _baseline(intent["baseline"]))
    data = dict(intent["record"])
    data["commit"] = commit or None
    note = f"the engine was killed after the keep was committed; run {recovered_by} finished it"
    if notes:
        note += f"; {', '.join(notes)} changed meanwhile and kept their content"
    data["reason"] = f"{data['reason']} ({note})"
    return _record(data)


def _committed(repo: git.RepoInfo, intent: dict[str, Any], lines: list[dict[str, Any]]
               ) -> str | bool | None:
    """The keep commit (None: the keep makes none) once past the commit point; else False."""
    updated = [x for x in lines if x.get("step") == "ref_updated"]
    if updated:
        return updated[-1].get("commit")
    if not intent.get("commits"):
        return None
    prepared = [x for x in lines if x.get("step") == "commit"]
    if not prepared or not repo.is_git:
        return False
    commit, ref = str(prepared[-1]["commit"]), str(prepared[-1]["ref"])
    # The branch holds the commit, or a later keep landed on top of it.
    proc = git.run(repo.ctx, "merge-base", "--is-ancestor", commit, ref, check=False)
    return commit if proc.returncode == 0 else False


def _roll_files_forward(root: Path, repo: git.RepoInfo, intent: dict[str, Any]) -> list[str]:
    """Write the kept blobs where the tree still holds the pre-keep content; the paths the
    user changed meanwhile (left alone)."""
    changes = [FileChange(**f) for f in intent["changes"]]
    start, frozen = intent["start"], intent["frozen"]
    todo, done, theirs = [], [], []
    for f in changes:
        now = sync.path_state(root, f.path)
        if now == frozen.get(f.path):
            done.append(f)
        elif now == start.get(f.path):
            todo.append(f)
        else:
            theirs.append(f.path)
    if todo:
        sync.check_paths_inside(root, [f.path for f in todo])
        objects = intent.get("objects")
        source = git.Context(root, git_dir=Path(objects)) if objects else repo.ctx
        sync.write_files(root, source, todo)
    if intent.get("commits") and repo.is_git:
        # An index entry still as it was before the keep follows the commit, as in the keep
        # itself, even where the user edited the file since: that edit stays unstaged.
        current = index_entries(repo, [f.path for f in changes])
        ours = [f for f in changes if current[f.path] == intent["index"].get(f.path)]
        if ours:
            sync.update_user_index(repo, ours)
    return theirs


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
