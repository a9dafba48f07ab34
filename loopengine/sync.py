"""Apply the artifact patch to the main tree and make the keep commit.

The commit is built from a temporary index (HEAD plus the kept artifact blobs), the
branch is moved with a compare-and-swap, and only then are the artifact paths written
into the working tree and the user's index.  Nothing else in the user's index or
working tree is touched, and no hook, signing or identity prompt can run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from loopengine import git
from loopengine.diff import FileChange
from loopengine.errors import GitError, SandboxError
from loopengine.task import Task, match_artifact

_GLOB = re.compile(r"[*?\[]")
_SKIP_TOP = {".git", "work", ".venv", ".pytest_cache"}
CAS_ATTEMPTS = 5


# ---------------------------------------------------------------------------
# The artifact files of a tree, and a digest of their content


def artifact_paths(root: Path, task: Task) -> list[str]:
    """Repo-relative paths of the existing artifact files (links included) under ``root``."""
    found: set[str] = set()
    for pattern in task.include:
        if not _GLOB.search(pattern):
            if os.path.lexists(root / pattern) and not (root / pattern).is_dir():
                found.add(pattern)
            continue
        literal = []
        for part in pattern.split("/"):
            if _GLOB.search(part):
                break
            literal.append(part)
        start = root.joinpath(*literal) if literal else root
        for folder, dirs, files in os.walk(start):
            rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
            if rel_folder == ".":
                dirs[:] = [d for d in dirs if d not in _SKIP_TOP]
                rel_folder = ""
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                rel = f"{rel_folder}/{name}" if rel_folder else name
                if match_artifact(task, rel):
                    found.add(rel)
    return sorted(found)


def artifact_state(root: Path, task: Task) -> dict[str, str]:
    """``path -> kind:sha256`` for every artifact file under ``root``."""
    state = {}
    for rel in artifact_paths(root, task):
        found = path_state(root, rel)
        if found is not None:
            state[rel] = found
    return state


def path_state(root: Path, rel: str) -> str | None:
    """``kind:sha256`` of one file (``link``, ``exec`` or ``file``); None when unreadable."""
    path = root / rel
    if path.is_symlink():
        return "link:" + hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError:
        return None
    kind = "exec" if mode & stat.S_IXUSR else "file"
    return f"{kind}:" + hashlib.sha256(data).hexdigest()


def digest(state: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(state):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + state[rel].encode() + b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------
# The keep


def check_paths_inside(root: Path, paths: Iterable[str]) -> None:
    """Refuse to write through a symbolic link anywhere on an artifact's path."""
    for rel in paths:
        current = root
        parts = rel.split("/")
        for part in parts:
            current = current / part
            if current.is_symlink():
                raise SandboxError(f"{rel}: {current.relative_to(root)} is a symbolic link in "
                                   "the main tree; artifacts are never synced through links")


def uncommitted_lines(repo: git.RepoInfo, paths: Sequence[str]) -> tuple[int, list[str]]:
    """Lines of ``paths`` in the main tree that HEAD does not have: the user's own edits,
    which the keep commit (HEAD plus the kept files) carries along with the candidate's.

    Git counts them (insertions + deletions); the paths that have any, sorted.
    """
    if not paths:
        return 0, []
    if repo.head is None:  # the root commit holds the files whole
        counts = {}
        for rel in paths:
            with contextlib.suppress(OSError):
                data = (repo.root / rel).read_bytes()
                if data:
                    counts[rel] = data.count(b"\n") + (not data.endswith(b"\n"))
        return sum(counts.values()), sorted(counts)
    out = git.run(repo.ctx, "diff", "--numstat", "-z", "--no-renames", "--no-ext-diff",
                  "--no-textconv", repo.head, "--", *paths).stdout
    total, found = 0, []
    for item in out.split(b"\0"):
        added, _, rest = item.partition(b"\t")
        deleted, _, name = rest.partition(b"\t")
        if not name:
            continue
        lines = sum(int(n) for n in (added, deleted) if n.isdigit())
        total += lines
        found.append(name.decode("utf-8", "surrogateescape"))
    return total, sorted(found)


def make_commit(
    repo: git.RepoInfo, changes: Sequence[FileChange], message: str,
    before_update: Callable[[str, str], None] | None = None,
) -> tuple[str, git.RepoInfo] | None:
    """Commit the artifact blobs on top of the current HEAD; CAS-move the branch.

    Returns the new commit and the repository state it was made on, or None when the
    branch already holds exactly these artifacts (nothing to commit).  ``before_update``
    is told the commit and the ref right before the branch moves (the journal notes them).
    """
    ident = git.identity(repo.ctx)
    for _ in range(CAS_ATTEMPTS):
        now = git.repo_info(repo.root)
        with tempfile.TemporaryDirectory(prefix="loopengine-index-") as tmp:
            ctx = now.ctx.with_index(Path(tmp) / "index")
            if now.head:
                git.run(ctx, "read-tree", now.head)
            else:
                git.run(ctx, "read-tree", "--empty")
            git.run(ctx, "update-index", "-z", "--index-info", input=_index_info(changes))
            tree = git.out(ctx, "write-tree")
        if now.head and tree == git.out(now.ctx, "rev-parse", f"{now.head}^{{tree}}"):
            return None
        parents = ["-p", now.head] if now.head else []
        commit = git.run(
            now.ctx, "commit-tree", tree, *parents, "-F", "-", input=message.encode(), env=ident
        ).stdout.decode().strip()
        ref = now.branch or "HEAD"
        deref = [] if now.branch else ["--no-deref"]
        if before_update is not None:
            before_update(commit, ref)
        moved = git.run(
            now.ctx, "update-ref", *deref, "-m", "loopengine: keep", ref, commit,
            now.head or git.NULL_SHA, check=False,
        )
        if moved.returncode == 0:
            return commit, now
    raise GitError(f"could not move {repo.branch or 'HEAD'}: it kept changing under the keep")


def _index_info(changes: Sequence[FileChange]) -> bytes:
    lines = []
    for f in changes:
        if f.status == "D":
            lines.append(f"0 {git.NULL_SHA}\t{f.path}")
        else:
            lines.append(f"{f.new_mode} {f.new_sha}\t{f.path}")
    return "\0".join(lines).encode("utf-8", "surrogateescape") + b"\0"


def write_files(root: Path, source: git.Context, changes: Sequence[FileChange]) -> None:
    """Write exactly the frozen blobs into the main working tree, atomically per file."""
    for f in changes:
        target = root / f.path
        if f.status == "D":
            if os.path.lexists(target):
                target.unlink()
            continue
        data = git.run(source, "cat-file", "blob", f.new_sha).stdout
        target.parent.mkdir(parents=True, exist_ok=True)
        umask = _umask()
        perm = (0o777 if f.new_mode == "100755" else 0o666) & ~umask
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, perm)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def update_user_index(repo: git.RepoInfo, changes: Sequence[FileChange]) -> None:
    """Point the user's index entries for the artifacts at the committed blobs, only."""
    git.run(repo.ctx, "update-index", "-z", "--index-info", input=_index_info(changes))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
