"""The evaluation fingerprint: a digest of everything that evaluates the artifacts.

A stored baseline belongs to one fingerprint; a candidate measured under another one is
never compared with it.  The fingerprint covers

- the task's ``runner``, ``scorer``, ``objective`` and ``constraints`` sections, as
  canonical JSON of the validated task (defaults filled in), so reformatting the YAML or
  editing the description, the mutator or the policy changes nothing;
- the mode and blob id of every file in the sandbox's start tree (the commit plus the
  uncommitted state) outside the artifacts and the task file itself, or, when
  ``policy.fingerprint`` lists globs, of the files those globs match.

Reading it costs one ``git ls-tree`` of the whole tree (a tree object git already has),
and one of the artifacts' folders to find them, unless a pattern starts with a wildcard
(then the first listing serves both).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import replace
from typing import Any

from loopengine import git
from loopengine.task import Task, match_artifact

SECTIONS = ("runner", "scorer", "objective", "constraints")
VERSION = b"loopengine-fingerprint-1\0"
_GLOB = re.compile(r"[*?\[]")


def sections(task: Task) -> dict[str, Any]:
    return {name: task.data[name] for name in SECTIONS}


def compute(task: Task, ctx: git.Context, tree: str) -> str:
    """``sha256:<hex>`` over the task's evaluating sections and the evaluating files."""
    return digest(task, files(task, ctx, tree))


def digest(task: Task, entries: list[bytes]) -> str:
    """The fingerprint of ``entries`` (``ls-tree`` lines, in ``ls-tree`` order)."""
    h = hashlib.sha256(VERSION)
    h.update(json.dumps(sections(task), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode())
    for entry in entries:
        h.update(b"\0" + entry)
    return "sha256:" + h.hexdigest()


def covers(task: Task, path: str) -> bool:
    """Whether the file at repo-relative ``path`` is one of the evaluating files."""
    if path == task.path.relative_to(task.repo_root).as_posix():
        return False
    chosen = _globs(task)
    if chosen is not None:
        return bool(chosen.include) and match_artifact(chosen, path)
    return not match_artifact(task, path)


def files(task: Task, ctx: git.Context, tree: str) -> list[bytes]:
    """The ``ls-tree`` entries (``mode type sha<TAB>path``) of the evaluating files."""
    task_file = task.path.relative_to(task.repo_root).as_posix()
    chosen = _globs(task)
    if chosen is not None:
        # Only what the globs can match is listed, then matched the way artifacts are.
        if not chosen.include:
            return []
        return [e for e in _list(ctx, tree, chosen.include)
                if _path(e) != task_file and match_artifact(chosen, _path(e))]
    # Everything but the artifacts and the task file: the artifacts are found in a listing
    # of their own folders, so a tree of 100,000 files costs a set lookup per file.  When
    # a pattern starts with a wildcard, their folder is the whole tree: one listing serves.
    full = _list(ctx, tree, ())
    near = full if _whole_tree(task.include) else _list(ctx, tree, task.include)
    skip = {task_file.encode("utf-8", "surrogateescape")}
    skip.update(p.encode("utf-8", "surrogateescape") for p in
                (_path(e) for e in near) if match_artifact(task, p))
    return [e for e in full if e.partition(b"\t")[2] not in skip]


def _globs(task: Task) -> Task | None:
    """The task with ``policy.fingerprint`` as its patterns, made repo-relative."""
    if not task.policy.fingerprint:
        return None
    patterns = (posixpath.normpath(posixpath.join(task.task_dir, p))
                for p in task.policy.fingerprint)
    inside = tuple(p for p in patterns if p != ".." and not p.startswith("../"))
    return replace(task, include=inside)


def _whole_tree(patterns: tuple[str, ...]) -> bool:
    """True when listing below the literal folders of ``patterns`` lists everything."""
    return not patterns or any(_prefix(p) == "" for p in patterns)


def _list(ctx: git.Context, tree: str, patterns: tuple[str, ...]) -> list[bytes]:
    """``ls-tree -r`` entries, below the literal folders of ``patterns`` when given."""
    prefixes = [] if _whole_tree(patterns) else sorted({_prefix(p) for p in patterns})
    out = git.run(ctx, "ls-tree", "-r", "-z", "--full-tree", tree, "--", *prefixes).stdout
    return [e for e in out.split(b"\0") if e]


def _prefix(pattern: str) -> str:
    """The part of a pattern before its first wildcard, up to a ``/``."""
    match = _GLOB.search(pattern)
    if match is None:
        return pattern
    return pattern[: match.start()].rpartition("/")[0]


def _path(entry: bytes) -> str:
    return entry.partition(b"\t")[2].decode("utf-8", "surrogateescape")
