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
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from loopengine import faults, git
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
    """``kind:sha256`` of one file (``link``, ``exec`` or ``file``); None when unreadable.

    Read in chunks: a candidate's size is a limit to check, never something to load."""
    path = root / rel
    if path.is_symlink():
        return "link:" + hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                return None
            for block in iter(lambda: fh.read(_CHUNK), b""):
                h.update(block)
    except OSError:
        return None
    kind = "exec" if mode & stat.S_IXUSR else "file"
    return f"{kind}:" + h.hexdigest()


def digest(state: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(state):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + state[rel].encode() + b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------
# The keep: one transaction with one commit point
#
#   prepare  (can fail; nothing the user sees has changed)
#     - every kept file is written, fsynced and checked, next to its target, under a name
#       derived from the run id (``.<name>.loopengine-<run_id>``);
#     - the user's index is locked the way git locks it (``index.lock``, waited for, with
#       a bound) and the new index is built beside it (``loopengine-<run_id>.index``);
#   commit point: the branch moves (``update-ref``), or, with no commit, the journal's
#     ``prepared`` line;
#   apply    (cannot fail but by a crash of the machine; the journal finishes it)
#     - renames: the prepared files over the targets, the new index over the index;
#     - the lock is released.
#
# Every name is derived from the run id, so that recovery finds what a killed keep left
# from the journal's intent alone (:func:`staged_for`).


class KeepError(SandboxError):
    """The keep cannot be prepared: nothing was changed, the run is a crash."""


INDEX_LOCK_WAIT_VAR = "LOOPENGINE_INDEX_LOCK_WAIT"
INDEX_LOCK_WAIT = 20.0  # seconds: an IDE's `git status` holds it for well under a second
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Staged:
    """What a keep prepared, by name; recovery rebuilds it from the journal."""

    root: Path
    run_id: str
    changes: tuple[FileChange, ...]
    git_dir: Path | None  # set when the user's index is updated

    def temp(self, rel: str) -> Path:
        target = self.root / rel
        return target.with_name(f".{target.name}.loopengine-{self.run_id}")

    @property
    def lock(self) -> Path | None:
        return self.git_dir / "index.lock" if self.git_dir else None

    @property
    def new_index(self) -> Path | None:
        return self.git_dir / f"loopengine-{self.run_id}.index" if self.git_dir else None

    @property
    def token(self) -> bytes:
        return f"loopengine keep {self.run_id}\n".encode()

    def holds_lock(self) -> bool:
        if self.lock is None:
            return False
        try:
            with open(self.lock, "rb") as fh:
                return fh.read(len(self.token) + 1) == self.token
        except OSError:
            return False

    # -- after the commit point -------------------------------------------------

    def apply(self, start: dict[str, str], frozen: dict[str, str]) -> list[str]:
        """Put every prepared file and the new index in place; the paths left alone
        because the user changed them meanwhile.  Idempotent: a recovery killed half-way
        is run again."""
        theirs = []
        for f in self.changes:
            tmp, target = self.temp(f.path), self.root / f.path
            now = path_state(self.root, f.path)
            if f.status == "D":
                if now is not None and now == start.get(f.path):
                    target.unlink()
                continue
            if not os.path.lexists(tmp):
                if now != frozen.get(f.path):
                    theirs.append(f.path)
                continue
            if now == start.get(f.path):
                os.replace(tmp, target)
                faults.point("after_file")
            else:
                theirs.append(f.path)
                tmp.unlink()
        if self.new_index is not None and os.path.lexists(self.new_index):
            if self.holds_lock():
                _fsync_dir(self.new_index.parent)
                os.replace(self.new_index, self.new_index.parent / "index")
                faults.point("after_index")
            else:  # someone broke our lock: their index wins, ours is dropped
                self.new_index.unlink()
        self.release()
        return sorted(theirs)

    # -- before it, or to clean up ----------------------------------------------

    def abandon(self) -> None:
        """Remove everything prepared; nothing the user sees has changed."""
        for f in self.changes:
            with contextlib.suppress(FileNotFoundError):
                self.temp(f.path).unlink()
        if self.new_index is not None:
            with contextlib.suppress(FileNotFoundError):
                self.new_index.unlink()
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.new_index}.lock").unlink()
        self.release()

    def release(self) -> None:
        if self.lock is not None and self.holds_lock():
            with contextlib.suppress(FileNotFoundError):
                self.lock.unlink()


def staged_for(root: Path, repo: git.RepoInfo, run_id: str, changes: Sequence[FileChange],
               *, index: bool) -> Staged:
    return Staged(root, run_id, tuple(changes), repo.git_dir if index and repo.is_git else None)


def prepare(staged: Staged, repo: git.RepoInfo, source: Path, source_ctx: git.Context,
            frozen: dict[str, str]) -> None:
    """Everything of the keep that can fail; on failure, nothing is left behind."""
    try:
        check_paths_inside(staged.root, [f.path for f in staged.changes])
        for f in staged.changes:
            if f.status != "D":
                _stage_file(staged, repo, f, source, source_ctx, frozen.get(f.path))
                faults.point("after_temp")
        if staged.git_dir is not None:
            _lock_index(staged)
            faults.point("after_index_lock")
            _build_index(staged, repo)
            faults.point("after_new_index")
    except BaseException:
        staged.abandon()
        raise


def _stage_file(staged: Staged, repo: git.RepoInfo, f: FileChange, source: Path,
                source_ctx: git.Context, expected: str | None) -> None:
    target = staged.root / f.path
    tmp = staged.temp(f.path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise KeepError(f"{f.path}: cannot be examined ({exc.strerror}); nothing was "
                        "changed") from exc
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise KeepError(f"{f.path}: is not a regular file in the main tree; nothing was "
                        "changed")
    # A kept file keeps its permission bits (0600 stays 0600); a new one gets the umask's.
    if st is not None:
        perm = stat.S_IMODE(st.st_mode)
    else:
        perm = (0o777 if f.new_mode == "100755" else 0o666) & ~_umask()
    want = expected.split(":", 1)[-1] if expected else None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(tmp) as fh:
            got = _copy_scored_bytes(source / f.path, fh)
            faults.error("keep_write")
            if want is None or got != want:
                # The sandbox no longer holds the scored bytes: the blob, as git would
                # check it out (filters, eol), must be them.
                fh.seek(0)
                fh.truncate()
                got = _blob_to_file(source_ctx, f.path, f.new_sha, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, perm)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise KeepError(f"{f.path}: cannot write the kept artifact ({exc.strerror}: "
                        f"{exc.filename or target}); nothing was changed") from exc
    if want is not None and got != want:
        tmp.unlink()
        raise KeepError(f"{f.path}: the bytes to keep are not the bytes that were scored; "
                        "nothing was changed")
    if repo.is_git:
        _check_conversion(repo, source_ctx, f, tmp)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[BinaryIO]:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a leftover of this very run id (recovery removes them too)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    with os.fdopen(fd, "w+b") as fh:
        yield fh


def _copy_scored_bytes(src: Path, fh: BinaryIO) -> str | None:
    """Copy ``src`` into ``fh`` in chunks; its sha256, or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(src, "rb", buffering=0) as inp:
            if not stat.S_ISREG(os.fstat(inp.fileno()).st_mode):
                return None
            for block in iter(lambda: inp.read(_CHUNK), b""):
                h.update(block)
                fh.write(block)
    except OSError:
        return None
    return h.hexdigest()


def _blob_to_file(ctx: git.Context, rel: str, sha: str, fh: BinaryIO) -> str:
    """The blob as git checks it out at ``rel`` (smudge filters, eol), streamed; sha256."""
    fh.flush()
    start = fh.tell()
    proc = git.run_to(ctx, fh, "cat-file", "--filters", f"--path={rel}", sha)
    if proc.returncode != 0:
        raise KeepError(f"{rel}: cannot read the kept blob {sha[:12]}: "
                        f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    fh.seek(start)
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(_CHUNK), b""):
        h.update(block)
    return h.hexdigest()


def _check_conversion(repo: git.RepoInfo, source_ctx: git.Context, f: FileChange,
                      tmp: Path) -> None:
    """The kept bytes must be what the keep commit's blob is in the user's repository:
    ``git add`` of them gives the blob back, so that ``git status`` is clean after the keep.
    A filter, ``eol``, ``ident`` or ``working-tree-encoding`` that breaks this is named."""
    if git.blob_id(tmp, len(f.new_sha)) == f.new_sha:
        return  # no conversion at all: the bytes are the blob
    proc = git.run(repo.ctx, "hash-object", f"--path={f.path}", "--", str(tmp), check=False)
    if proc.returncode == 0 and proc.stdout.decode().strip() == f.new_sha:
        return
    # Named as the candidate has them (its .gitattributes made the blob), else the user's.
    attrs = git.attributes(source_ctx, f.path) or git.attributes(repo.ctx, f.path)
    named = ", ".join(f"{k}={v}" for k, v in attrs.items()) or "core.autocrlf or a filter"
    tmp.unlink()
    raise KeepError(f"{f.path}: the scored bytes would not be kept as scored: the "
                    f"repository's attributes ({named}) turn them into another blob than "
                    "the one that was validated; nothing was changed")


def _lock_index(staged: Staged) -> None:
    """Take ``index.lock`` as git does (create it exclusively), waiting a bounded time
    for a git process that holds it; its content names this run, for recovery."""
    assert staged.lock is not None and staged.git_dir is not None
    wait = _lock_wait()
    token = staged.git_dir / f"loopengine-{staged.run_id}.token"
    token.write_bytes(staged.token)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                os.link(token, staged.lock)  # atomic, and fails if it exists
                return
            except FileExistsError:
                if staged.holds_lock():
                    return
                if time.monotonic() >= deadline:
                    raise KeepError(
                        f"the index is locked: {staged.lock} has existed for {wait:g}s "
                        "(another git process is running, or one crashed and left it; if "
                        "no git process is running, remove the file); nothing was "
                        "changed") from None
                time.sleep(0.05)
    finally:
        token.unlink()


def _lock_wait() -> float:
    try:
        return float(os.environ.get(INDEX_LOCK_WAIT_VAR, INDEX_LOCK_WAIT))
    except ValueError:
        return INDEX_LOCK_WAIT


def _build_index(staged: Staged, repo: git.RepoInfo) -> None:
    """The user's index with only the artifact entries changed, beside the index."""
    assert staged.new_index is not None and staged.git_dir is not None
    index = staged.git_dir / "index"
    if index.exists():
        shutil.copy2(index, staged.new_index)
    git.run(repo.ctx.with_index(staged.new_index), "update-index", "-z", "--index-info",
            input=index_info(staged.changes))
    with open(staged.new_index, "rb") as fh:
        os.fsync(fh.fileno())


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
    repo: git.RepoInfo, changes: Sequence[FileChange], message: str, scratch: Path,
    before_update: Callable[[str, str], None] | None = None,
) -> tuple[str, git.RepoInfo] | None:
    """Commit the artifact blobs on top of the current HEAD; CAS-move the branch.

    Returns the new commit and the repository state it was made on, or None when the
    branch already holds exactly these artifacts (nothing to commit).  ``before_update``
    is told the commit and the ref right before the branch moves (the journal notes them).
    The temporary index lives in ``scratch`` (the sandbox), which recovery removes.
    """
    ident = git.identity(repo.ctx)
    null = git.null_sha(repo)
    for _ in range(CAS_ATTEMPTS):
        now = git.repo_info(repo.root)
        index = scratch / "keep.index"
        with contextlib.suppress(FileNotFoundError):
            index.unlink()
        ctx = now.ctx.with_index(index)
        try:
            if now.head:
                git.run(ctx, "read-tree", now.head)
            else:
                git.run(ctx, "read-tree", "--empty")
            git.run(ctx, "update-index", "-z", "--index-info", input=index_info(changes))
            tree = git.out(ctx, "write-tree")
        finally:
            with contextlib.suppress(FileNotFoundError):
                index.unlink()
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
            now.head or null, check=False,
        )
        if moved.returncode == 0:
            return commit, now
    raise GitError(f"could not move {repo.branch or 'HEAD'}: it kept changing under the keep")


def index_info(changes: Sequence[FileChange]) -> bytes:
    """``update-index --index-info`` input that sets (or removes) exactly these paths."""
    lines = []
    for f in changes:
        if f.status == "D":
            lines.append(f"0 {'0' * len(f.old_sha)}\t{f.path}")
        else:
            lines.append(f"{f.new_mode} {f.new_sha}\t{f.path}")
    return "\0".join(lines).encode("utf-8", "surrogateescape") + b"\0"


def write_files(root: Path, source: git.Context, changes: Sequence[FileChange]) -> None:
    """Write the blobs into a working tree as git checks them out (filters, eol applied),
    streamed and atomically per file; a file that exists keeps its permission bits."""
    for f in changes:
        target = root / f.path
        if f.status == "D":
            if os.path.lexists(target):
                target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            perm = stat.S_IMODE(os.lstat(target).st_mode)
        except OSError:
            perm = (0o777 if f.new_mode == "100755" else 0o666) & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w+b") as fh:
                _blob_to_file(source, f.path, f.new_sha, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, perm)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def as_checked_out(tree: Path, ctx: git.Context, changes: Sequence[FileChange]) -> None:
    """Rewrite each changed file as git would check its blob out (a mutator writes LF where
    ``core.autocrlf`` checks out CRLF; a filter's or ``ident``'s working-tree form): the
    bytes the runner and scorer see are then the bytes the keep writes for the user."""
    files = [f for f in changes if f.status != "D" and f.new_mode in ("100644", "100755")
             and not (tree / f.path).is_symlink()]
    converting = git.attributes_of(ctx, [f.path for f in files]) if files else {}
    todo = []
    for f in files:
        try:
            same = git.blob_id(tree / f.path, len(f.new_sha)) == f.new_sha
        except OSError:
            continue
        if not same or f.path in converting:
            todo.append(f)
    if todo:
        write_files(tree, ctx, todo)


def update_user_index(repo: git.RepoInfo, changes: Sequence[FileChange]) -> None:
    """Point the user's index entries for the artifacts at the committed blobs, only."""
    git.run(repo.ctx, "update-index", "-z", "--index-info", input=index_info(changes))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
