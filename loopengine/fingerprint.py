"""The evaluation fingerprint: a digest of everything that evaluates the artifacts.

A stored baseline belongs to one fingerprint; a candidate measured under another one is
never compared with it.  The fingerprint covers

- the task's ``runner``, ``scorer``, ``objective`` and ``constraints`` sections, as
  canonical JSON of the validated task (defaults filled in), so reformatting the YAML or
  editing the description, the mutator or the policy changes nothing;
- the mode and blob id of every file in the sandbox's start tree (the commit plus the
  uncommitted state) outside the artifacts and the task file itself, and outside the
  artifacts of the repository's other tasks (``others``), or, when ``policy.fingerprint``
  lists globs, of the files those globs match.

The other tasks are the files named ``task.yaml`` anywhere in the start tree (what
``loopengine init`` writes, ``tasks/<id>/task.yaml``), read from their blobs; their
``artifacts.include`` patterns are resolved against their own folders.  A keep of another
task changes only that task's artifacts, so two campaigns on one repository do not make
each other's baselines stale.  A file that this task's runner or scorer command names (a
path, relative to the step's ``cwd``, or a folder holding it) and a file in this task's own
folder always count, even when another task's pattern matches it.  A task file that
cannot be read as YAML, or does not have a list of strings as ``artifacts.include``,
contributes nothing (its files count).

Reading it costs one ``git ls-tree`` of the whole tree (a tree object git already has),
and one of the artifacts' folders to find them, unless a pattern starts with a wildcard
(then the first listing serves both).
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import yaml

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


TASK_FILE_NAME = "task.yaml"


def covers(task: Task, path: str, others: Callable[[str], bool] | None = None) -> bool:
    """Whether the file at repo-relative ``path`` is one of the evaluating files
    (``others``: the predicate ``others()`` returns, for the default fingerprint)."""
    if path == task.path.relative_to(task.repo_root).as_posix():
        return False
    chosen = _globs(task)
    if chosen is not None:
        return bool(chosen.include) and match_artifact(chosen, path)
    return not match_artifact(task, path) and not (others is not None and others(path))


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
    other = others(task, ctx, tree, full)
    skip.update(p.encode("utf-8", "surrogateescape") for p in
                (_path(e) for e in full) if other(p))
    return [e for e in full if e.partition(b"\t")[2] not in skip]


def others(task: Task, ctx: git.Context, tree: str,
           full: list[bytes] | None = None) -> Callable[[str], bool]:
    """A predicate on repo-relative paths: an artifact of another task of the repository
    that this task's evaluation does not name (left out of the default fingerprint)."""
    if full is None:
        full = _list(ctx, tree, ())
    own = task.path.relative_to(task.repo_root).as_posix()
    found: list[tuple[str, str]] = []  # (task file path, blob id)
    for entry in full:
        meta, _, raw = entry.partition(b"\t")
        name = raw.rsplit(b"/", 1)[-1]
        if name != TASK_FILE_NAME.encode():
            continue
        path = raw.decode("utf-8", "surrogateescape")
        fields = meta.split()
        if path != own and len(fields) == 3 and fields[1] == b"blob":
            found.append((path, fields[2].decode()))
    patterns: list[str] = []
    if found:
        blobs = _blobs(ctx, [sha for _, sha in found])
        for path, sha in found:
            folder = posixpath.dirname(path)
            patterns.extend(_resolve(folder, p) for p in _includes(blobs.get(sha, b"")))
    patterns = [p for p in patterns if p]
    if not patterns:
        return _nothing
    matcher = replace(task, include=tuple(patterns))
    kept = _named(task)
    folder = "" if task.task_dir in ("", ".") else task.task_dir.rstrip("/") + "/"

    def other(path: str) -> bool:
        if folder and path.startswith(folder):
            return False
        if any(path == n or path.startswith(n + "/") for n in kept):
            return False
        return match_artifact(matcher, path) and not match_artifact(task, path)

    return other


def _nothing(path: str) -> bool:
    return False


def _blobs(ctx: git.Context, shas: list[str]) -> dict[str, bytes]:
    """The content of each blob (one ``cat-file --batch``); a task file is small."""
    wanted = sorted(set(shas))
    out = git.run(ctx, "cat-file", "--batch",
                  input="".join(f"{s}\n" for s in wanted).encode()).stdout
    found: dict[str, bytes] = {}
    pos = 0
    for sha in wanted:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3 or header[1] != b"blob":
            continue  # "<sha> missing"
        size = int(header[2])
        found[sha] = out[pos:pos + size]
        pos += size + 1
    return found


@functools.lru_cache(maxsize=256)
def _includes(text: bytes) -> tuple[str, ...]:
    """``artifacts.include`` of a task file's content; () when it is not a task file."""
    if len(text) > 1_000_000:
        return ()
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        return ()
    artifacts = data.get("artifacts") if isinstance(data, dict) else None
    include = artifacts.get("include") if isinstance(artifacts, dict) else None
    if not isinstance(include, list) or not all(isinstance(p, str) for p in include):
        return ()
    return tuple(include)


def _resolve(folder: str, pattern: str) -> str:
    """A task-relative pattern made repo-relative; "" when it leaves the repository."""
    if not pattern or pattern.startswith("/"):
        return ""
    joined = posixpath.normpath(posixpath.join(folder, pattern)) if folder else \
        posixpath.normpath(pattern)
    if joined in (".", "..") or joined.startswith("../"):
        return ""
    return joined


def _named(task: Task) -> tuple[str, ...]:
    """Repo-relative paths that the runner's and scorer's commands name (every word,
    and the value of ``--opt=value``, read relative to the step's ``cwd``)."""
    names: set[str] = set()
    for step in (task.runner, task.scorer):
        try:
            words = shlex.split(step.command)
        except ValueError:
            words = step.command.split()
        for word in words:
            for part in {word, word.rpartition("=")[2]}:
                if not part or part.startswith("/") or part.startswith("-"):
                    continue
                cwd = "" if step.cwd in ("", ".") else step.cwd
                resolved = _resolve(cwd, part.rstrip("/"))
                if resolved:
                    names.add(resolved)
    return tuple(sorted(names))


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
