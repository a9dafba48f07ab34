"""Candidate refs (contract section 11): every candidate as a commit under
``refs/loopengine/<task_id>/<run_id>``.

The commit's parent is the commit the sandbox started from; its tree is that commit's
tree with the candidate's artifact changes laid over it -- nothing else of the sandbox,
so a file the mutator wrote outside the artifacts (a discard's 50 MB dump, say) never
reaches the user's object store through a ref.  The message ends with the keep commit's
trailers plus ``Loopengine-Status``.  ``git log``, ``git diff`` and ``git cherry-pick``
work on it as on any commit.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loopengine import decide as decide_mod
from loopengine import git, sync
from loopengine.diff import FileChange
from loopengine.results import printable
from loopengine.task import Task, match_artifact

PREFIX = "refs/loopengine/"
# refs/loopengine/<task_id>/<run_id>: what the engine writes (tripwire and gc rely on it).
_NAME = re.compile(r"^refs/loopengine/([A-Za-z0-9._-]+)/(\d{8}T\d{12}Z-[0-9a-f]{6})$")


def ref_name(task_id: str, run_id: str) -> str:
    return f"{PREFIX}{task_id}/{run_id}"


def parse_name(ref: str) -> tuple[str, str] | None:
    """``(task_id, run_id)`` of a candidate ref's name, None for any other name."""
    found = _NAME.match(ref)
    return (found.group(1), found.group(2)) if found else None


def saved_changes(task: Task, changes: Iterable[FileChange],
                  violations: Sequence[dict[str, object]] = ()) -> list[FileChange]:
    """The changes a ref holds: artifact paths only, and none that a rule refused."""
    refused = {v.get("path") for v in violations if v.get("path")}
    return [f for f in changes if match_artifact(task, f.path) and f.path not in refused]


@dataclass(frozen=True)
class Saved:
    ref: str
    commit: str


def save(repo: git.RepoInfo, source: git.Context, *, task: Task, run_id: str, status: str,
         reason: str, summary: str, start_commit: str, changes: Sequence[FileChange],
         score: float | None, baseline: float | None, scratch: Path | None = None) -> Saved:
    """Write the candidate's commit and point its ref at it; blobs come from ``source``.

    The temporary index lives in ``scratch`` (the sandbox's folder, which recovery removes
    after a SIGKILL), never loose in $TMPDIR."""
    promote(repo, source, [f.new_sha for f in changes if f.status != "D"])
    with tempfile.TemporaryDirectory(prefix="loopengine-ref-", dir=scratch) as tmp:
        ctx = repo.ctx.with_index(Path(tmp) / "index")
        git.run(ctx, "read-tree", start_commit)
        if changes:
            git.run(ctx, "update-index", "-z", "--index-info", input=sync.index_info(changes))
        tree = git.out(ctx, "write-tree")
    message = (f"loopengine({task.id}): {status} {decide_mod.fmt(score)}\n\n"
               f"{reason}\n{summary or 'no change'}\n\n"
               f"Loopengine-Task: {task.id}\n"
               f"Loopengine-Run: {run_id}\n"
               f"Loopengine-Score: {decide_mod.fmt(score)}\n"
               f"Loopengine-Baseline: {decide_mod.fmt(baseline)}\n"
               f"Loopengine-Status: {status}\n")
    commit = git.run(repo.ctx, "commit-tree", tree, "-p", start_commit, "-F", "-",
                     input=printable(message).encode("utf-8"), env=git.identity(repo.ctx)
                     ).stdout.decode().strip()
    ref = ref_name(task.id, run_id)
    git.run(repo.ctx, "update-ref", "--no-deref", "-m", f"loopengine: {status} {run_id}",
            ref, commit, git.null_sha(repo))
    return Saved(ref, commit)


def promote(repo: git.RepoInfo, source: git.Context, shas: Sequence[str]) -> None:
    """Copy into the user's object store the blobs it lacks (only these), streamed."""
    git.promote(source, repo.ctx, shas)


@dataclass(frozen=True)
class CandidateRef:
    ref: str
    task_id: str
    run_id: str
    commit: str
    status: str  # "" when the commit has no Loopengine-Status trailer


def list_refs(repo: git.RepoInfo, task_id: str | None = None) -> list[CandidateRef]:
    """The candidate refs, oldest run first (run ids sort in start order)."""
    if not repo.is_git:
        return []
    where = f"{PREFIX}{task_id}/" if task_id else PREFIX
    data = git.run(repo.ctx, "for-each-ref", "--format=%(refname)%00%(objectname)%00"
                   "%(contents:trailers:key=Loopengine-Status,valueonly,separator=)",
                   where).stdout.decode("utf-8", "surrogateescape")
    found = []
    for line in data.splitlines():
        name, _, rest = line.partition("\0")
        commit, _, status = rest.partition("\0")
        parsed = parse_name(name)
        if parsed is not None:
            found.append(CandidateRef(name, parsed[0], parsed[1], commit, status.strip()))
    return sorted(found, key=lambda r: r.run_id)


def delete(repo: git.RepoInfo, refs: Sequence[CandidateRef]) -> None:
    if not refs:
        return
    script = "".join(f"delete {r.ref} {r.commit}\n" for r in refs)
    git.run(repo.ctx, "update-ref", "--no-deref", "--stdin", input=script.encode())
