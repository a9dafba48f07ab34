"""The evaluation fingerprint: a digest of everything that evaluates the artifacts.

A stored baseline belongs to one fingerprint; a candidate measured under another one is
never compared with it.  The fingerprint covers

- the task's ``runner``, ``scorer``, ``objective`` and ``constraints`` sections, as
  canonical JSON of the validated task (defaults filled in), so reformatting the YAML or
  editing the description, the mutator or the policy changes nothing;
- the mode and blob id of every file in the sandbox's start tree (the commit plus the
  uncommitted state) outside the artifacts and the task file itself, or, when
  ``policy.fingerprint`` lists globs, of the files those globs match.

Reading it costs one ``git ls-tree`` of a tree object git already has.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import replace
from typing import Any

from loopengine import git
from loopengine.task import Task, match_artifact

SECTIONS = ("runner", "scorer", "objective", "constraints")
VERSION = b"loopengine-fingerprint-1\0"


def sections(task: Task) -> dict[str, Any]:
    return {name: task.data[name] for name in SECTIONS}


def files(task: Task, ctx: git.Context, tree: str) -> list[tuple[str, str]]:
    """``(path, "mode sha")`` of the files of ``tree`` that evaluate the artifacts."""
    listing = git.run(ctx, "ls-tree", "-r", "-z", "--full-tree", tree).stdout
    task_file = task.path.relative_to(task.repo_root).as_posix()
    # The globs are task-relative, like artifacts.include, and use the same matcher.
    chosen = _globs(task)
    out = []
    for entry in git.split_z(listing):
        meta, _, path = entry.partition("\t")
        mode, _kind, sha = meta.split(" ")
        if path == task_file or match_artifact(task, path):
            continue
        if chosen is not None and not match_artifact(chosen, path):
            continue
        out.append((path, f"{mode} {sha}"))
    return out


def _globs(task: Task) -> Task | None:
    if not task.policy.fingerprint:
        return None
    patterns = tuple(posixpath.normpath(posixpath.join(task.task_dir, p))
                     for p in task.policy.fingerprint)
    return replace(task, include=patterns)


def compute(task: Task, ctx: git.Context, tree: str) -> str:
    """``sha256:<hex>`` over the task's evaluating sections and the evaluating files."""
    h = hashlib.sha256(VERSION)
    h.update(json.dumps(sections(task), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode())
    for path, meta in files(task, ctx, tree):
        h.update(b"\0" + path.encode("utf-8", "surrogateescape") + b"\0" + meta.encode())
    return "sha256:" + h.hexdigest()
