"""A per-task pool of worktrees, reset to the baseline instead of made anew (``sandbox.reuse``).

A fresh sandbox costs a checkout of every file and a delete of every file; a reused one
costs a scan for what the last iteration changed.  Under the sandbox root:

    loopengine-pool-<key>/      key: a hash of the repository's git dir and the task id
        owner                   that git dir and task id, one a line
        <i>.lock                flock, held by the run that uses member i
        <i>/tree/               member i's working tree, registered in the repository
                                (``git worktree list`` shows it)
        <i>/admin               the path of its entry under ``.git/worktrees/``
        <i>/state.json          the commit its index holds, and that index's stat data
        <i>/*.index             the engine's temporary indexes

A member is reset right before each use: the last run's private ``.git`` goes; if the
baseline commit moved (or the index is not the one this module wrote), ``reset --hard``;
``git clean -ffdx`` removes every untracked and ignored file, nested repositories and
empty folders; one ``git status`` (and, alongside it, ``find`` for a ``.git`` a step left
below the top) finds what else differs; ``checkout-index`` restores those files and a
second ``status`` of them must come back empty.  Then the overlay, the private ``.git``
and an empty ``work/``, as for a fresh sandbox.  Whatever cannot be reset is a
``SandboxError`` (a ``crash``), and the member is deleted so that the next run makes a
new one.

The pool outlives the run: ``python -m loopengine.pool drop`` deletes a repository's
pools (members in use are left alone), and a run of a task whose reuse is off deletes
that task's pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from loopengine import git, sandbox
from loopengine.errors import GitError, SandboxError
from loopengine.results import locked

POOL_PREFIX = f"{sandbox.PREFIX}pool-"
# Concurrent runs of one task beyond this many get fresh sandboxes.
POOL_SIZE = 4
# A restore of more paths than this is re-checked with a full status, not a path list.
_MAX_LISTED = 1000


@dataclass(frozen=True)
class Member:
    folder: Path
    lock_fd: int

    @property
    def tree(self) -> Path:
        return self.folder / "tree"


class Reservation:
    """A pool member being reset in a thread of its own.

    The reset needs nothing from the main tree, so it runs while the engine reads the
    main tree's status (the two scans then share the machine's cores).
    """

    def __init__(self, member: Member, repo: git.RepoInfo) -> None:
        self.member = member
        self.repo = repo
        self._ready: tuple[Path, git.Context] | None = None
        self._error: BaseException | None = None
        self._settled = False  # handed to a Sandbox, handed back or deleted: hands off
        self._thread = threading.Thread(target=self._reset, name="loopengine-pool")
        self._thread.start()

    def _reset(self) -> None:
        try:
            self._ready = _reset_member(self.member, self.repo)
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc

    def wait(self) -> tuple[Path, git.Context]:
        """The member's admin dir and git context, reset; SandboxError (member deleted) if
        it could not be."""
        while self._thread.is_alive():
            self._thread.join(0.05)  # in slices: the main thread stays interruptible
        if self._error is None:
            assert self._ready is not None
            return self._ready
        self.discard()
        if isinstance(self._error, GitError | SandboxError | OSError):
            raise SandboxError(f"the reused sandbox could not be reset (it was deleted; the "
                               f"next run makes a new one): {self._error}") from self._error
        raise self._error

    def discard(self) -> None:
        """Delete the member (the next run makes a new one)."""
        self._thread.join()
        if not self._settled:
            self._settled = True
            _discard(self.member, self.repo)

    def cancel(self) -> None:
        """Hand the member back unused (a run that ended before its sandbox was made)."""
        self._thread.join()
        if not self._settled:
            self._settled = True
            os.close(self.member.lock_fd)

    def hand_over(self, sb: sandbox.Sandbox) -> sandbox.Sandbox:
        """The sandbox owns the lock from now on (``sandbox.remove`` releases it)."""
        self._settled = True
        return sb


def reserve(repo: git.RepoInfo, task_id: str, *, reuse: bool) -> Reservation | None:
    """Start resetting a member of the task's pool; None when the run gets a fresh
    sandbox (reuse off, no commit to reset to, or every member in use)."""
    if not reuse or repo.head is None:
        return None
    member = _acquire(repo, task_id)
    return None if member is None else Reservation(member, repo)


def take(
    repo: git.RepoInfo, task_id: str, run_id: str, overlay: Iterable[str], *, reuse: bool,
    reserved: Reservation | None = None,
) -> sandbox.Sandbox:
    """The sandbox for one run: the reserved (or a newly reserved) member, reset and with
    the overlay laid; else a fresh sandbox.  A task that no longer reuses gets its old
    pool deleted."""
    if reserved is None:
        folder = pool_dir(repo, task_id)
        if not reuse and folder is not None and folder.is_dir():
            drop_pool(repo, folder)
        reserved = reserve(repo, task_id, reuse=reuse)
        if reserved is None:
            return sandbox.create(repo, run_id, overlay)
    member = reserved.member
    try:
        admin, ctx = reserved.wait()  # on a SandboxError the member is deleted already
    except BaseException:
        reserved.cancel()
        raise
    try:
        start_index = member.folder / "start.index"
        shutil.copy2(admin / "index", start_index)  # copy2: see sandbox._create_worktree
        start_tree = sandbox.finish_tree(repo, ctx, start_index, overlay, admin / "index")
    except (GitError, SandboxError, OSError) as exc:
        reserved.discard()
        raise SandboxError(f"the reused sandbox could not be prepared (it was deleted; the "
                           f"next run makes a new one): {exc}") from exc
    except BaseException:
        reserved.cancel()  # interrupted: the next reset undoes what the overlay laid
        raise
    return reserved.hand_over(sandbox.Sandbox(
        "worktree", member.folder, member.tree, ctx, admin, start_index, start_tree,
        repo.head, lock_fd=member.lock_fd))


def pool_dir(repo: git.RepoInfo, task_id: str) -> Path | None:
    if repo.common_dir is None:
        return None
    key = hashlib.sha256(f"{repo.common_dir}\0{task_id}".encode()).hexdigest()[:16]
    return sandbox.sandbox_root() / f"{POOL_PREFIX}{key}"


# ---------------------------------------------------------------------------
# Taking a member


def _acquire(repo: git.RepoInfo, task_id: str) -> Member | None:
    folder = pool_dir(repo, task_id)
    assert folder is not None
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = folder / "owner"
    if not owner.exists():
        owner.write_text(f"{repo.common_dir}\n{task_id}\n")
    for i in range(POOL_SIZE):
        fd = _try_lock(folder / f"{i}.lock")
        if fd is not None:
            return Member(folder / str(i), fd)
    return None


def _try_lock(path: Path) -> int | None:
    """An flock on ``path`` if free; None when another run holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # `drop` unlinked the file between our open and our lock: again


def _reset_member(member: Member, repo: git.RepoInfo) -> tuple[Path, git.Context]:
    """Make the member (if it is not whole) and reset it; its admin dir and git context."""
    tree = member.tree
    admin = _admin_of(member)
    if admin is None:
        _remove_member(member.folder, repo)
        member.folder.mkdir(mode=0o700)
        admin = sandbox.add_worktree(repo, tree, checkout=False)
        (member.folder / "admin").write_text(f"{admin}\n")
    # The last run's private objects (its candidate's blobs) go with the reset.
    sandbox._rmtree(member.folder / "objects")
    ctx = sandbox.private_objects(git.Context(tree, git_dir=admin, work_tree=tree),
                                  member.folder, repo)
    _reset(member, repo, ctx, admin)
    return admin, ctx


def _admin_of(member: Member) -> Path | None:
    """The member's registered worktree entry, if the member is whole."""
    try:
        admin = Path((member.folder / "admin").read_text().strip())
        gitdir = Path((admin / "gitdir").read_text().strip())
    except OSError:
        return None
    if not member.tree.is_dir() or (admin / gitdir).resolve() != (member.tree / ".git").resolve():
        return None
    return admin


# ---------------------------------------------------------------------------
# The reset


def _reset(member: Member, repo: git.RepoInfo, ctx: git.Context, admin: Path) -> None:
    """Make the member's tree and index hold exactly ``repo.head``; SandboxError if not."""
    assert repo.head is not None
    state_file = member.folder / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = None
    state_file.unlink(missing_ok=True)  # a reset cut short must not look finished
    sandbox._rmtree(member.tree / ".git")  # the last run's private repository
    (admin / "index.lock").unlink(missing_ok=True)  # a git killed with its run; the member is ours
    full = state != {"head": repo.head, "index": _stat_key(admin / "index")}
    for _ in range(3):
        if full:
            git.run(ctx, *sandbox.PARALLEL_CHECKOUT, "-c", "core.logAllRefUpdates=false",
                    "reset", "--hard", "--quiet", "--no-recurse-submodules", repo.head)
        git.run(ctx, "clean", "-ffdxq")
        # Three read-only looks at once: tracked files (stat data), anything untracked or
        # ignored that clean left (a readdir walk), and `.git` entries, which git skips.
        find = ["find", str(member.tree), "-mindepth", "2", "-name", ".git", "-prune",
                "-print0"]
        untracked = git.command(ctx, ["ls-files", "-z", "--others", "--directory"])
        with _background(untracked, member.tree) as left, _background(find, member.tree) as nested:
            changed, other = _status(ctx)
        other += [f"?? {os.fsdecode(p)}" for p in left]
        for path in nested:
            sandbox._rmtree(Path(os.fsdecode(path)))  # a fresh tree has no `.git` below the top
        if nested:
            continue  # look again: a `.git` in a folder may have hidden it from clean
        if not other:
            break
        if full:
            raise SandboxError(f"{member.tree}: still differs from {repo.head[:12]} after a "
                               f"reset: {', '.join(other[:5])}")
        full = True  # an index that does not match its commit: start over with reset --hard
    else:
        raise SandboxError(f"{member.tree}: a step's `.git` folders keep coming back")
    if changed:
        data = "\0".join(changed).encode("utf-8", "surrogateescape") + b"\0"
        git.run(ctx, *sandbox.PARALLEL_CHECKOUT, "checkout-index", "-f", "-u", "-z", "--stdin",
                input=data)
        still, other = _status(ctx, changed if len(changed) <= _MAX_LISTED else None)
        if still or other:
            raise SandboxError(f"{member.tree}: could not restore {', '.join((still + other)[:5])}")
    state_file.write_text(json.dumps({"head": repo.head, "index": _stat_key(admin / "index")}))


def _status(ctx: git.Context, paths: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(tracked files that differ from the index, other differences as ``XY path``)."""
    args = ["status", "--porcelain=v1", "-z", "--untracked-files=no", "--no-renames",
            "--ignore-submodules=none"]
    if paths is not None:
        args = ["--literal-pathspecs", *args, "--", *paths]
    changed, other = [], []
    # Let status write back what it re-hashed: files the reset wrote in the same second
    # as the index are "racily clean", and would be re-hashed by every later scan.
    out = git.run(ctx, *args, env={"GIT_OPTIONAL_LOCKS": "1"}).stdout
    for item in out.split(b"\0"):
        if len(item) < 4:
            continue
        xy, path = item[:2].decode(), item[3:].decode("utf-8", "surrogateescape")
        if xy[0] == " " and xy[1] in "MDT":
            changed.append(path)
        else:
            other.append(f"{xy} {path}")
    return changed, other


@contextlib.contextmanager
def _background(argv: list[str], cwd: Path) -> Iterator[list[bytes]]:
    """Run ``argv`` while the block runs; afterwards the list holds its ``-z`` output.

    A command that cannot run is a SandboxError: the look it stands for was not taken.
    """
    found: list[bytes] = []
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=git.clean_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise SandboxError(f"{argv[0]}: {exc}") from exc
    try:
        yield found
    finally:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise SandboxError(f"{' '.join(argv[:2])} ... failed ({proc.returncode}): "
                           f"{err.decode('utf-8', 'replace').strip()[-500:]}")
    found.extend(p for p in out.split(b"\0") if p)


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


# ---------------------------------------------------------------------------
# Deleting members and pools


def _discard(member: Member, repo: git.RepoInfo) -> None:
    try:
        _remove_member(member.folder, repo)
    finally:
        os.close(member.lock_fd)


def _remove_member(folder: Path, repo: git.RepoInfo) -> None:
    """Delete a member's folder and unregister its worktree (never a global prune)."""
    with locked(repo.root, ".worktree.lock"):
        sandbox._rmtree(folder, large=True)
        for admin in _admins_into(repo, folder):
            sandbox._rmtree(admin)


def _admins_into(repo: git.RepoInfo, folder: Path) -> list[Path]:
    """The repository's worktree entries whose tree lies inside ``folder``."""
    assert repo.common_dir is not None
    folder = folder.resolve()
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(repo.common_dir / "worktrees"):
            try:
                gitdir = Path(entry.path, "gitdir").read_text().strip()
            except OSError:
                continue
            if (Path(entry.path) / gitdir).resolve().is_relative_to(folder):
                found.append(Path(entry.path))
    return found


def drop_pool(repo: git.RepoInfo, folder: Path) -> tuple[int, int]:
    """Delete the members of one pool that no run holds; (deleted, in use)."""
    deleted = busy = 0
    for lock in sorted(folder.glob("*.lock")):
        fd = _try_lock(lock)
        if fd is None:
            busy += 1
            continue
        try:
            _remove_member(folder / lock.stem, repo)
            lock.unlink()  # while held: a run that opened it finds the inode changed
            deleted += 1
        finally:
            os.close(fd)
    if not busy:
        for name in ("owner",):
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
    return deleted, busy


def pools(repo: git.RepoInfo) -> list[tuple[Path, str]]:
    """The pools of ``repo`` under the sandbox root, with their task ids."""
    found = []
    for folder in sorted(sandbox.sandbox_root().glob(f"{POOL_PREFIX}*")):
        try:
            common, task_id = (folder / "owner").read_text().splitlines()[:2]
        except (OSError, ValueError):
            continue
        if Path(common) == repo.common_dir:
            found.append((folder, task_id))
    return found


# ---------------------------------------------------------------------------
# python -m loopengine.pool


def _repo(path: str | None) -> git.RepoInfo:
    root = Path(path).resolve() if path else git.toplevel(Path.cwd())
    info = git.repo_info(root) if root else None
    if info is None or not info.is_git:
        raise click.ClickException("not a git repository (use --repo)")
    return info


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The sandbox pools (sandbox.reuse) of a repository, under the sandbox root."""


@main.command("list")
@click.option("--repo", type=click.Path(exists=True, file_okay=False), help="Repository root.")
def list_pools(repo: str | None) -> None:
    """Show each pool, its task and its members' worktrees."""
    for folder, task_id in pools(_repo(repo)):
        members = sorted(p.name for p in folder.iterdir() if p.is_dir())
        click.echo(f"{task_id}\t{folder}\t{', '.join(members) or 'no members'}")


@main.command()
@click.option("--repo", type=click.Path(exists=True, file_okay=False), help="Repository root.")
@click.option("--task", "task_id", help="Only this task's pool (default: all of them).")
def drop(repo: str | None, task_id: str | None) -> None:
    """Delete the pools' worktrees (members in use by a run are left alone)."""
    info = _repo(repo)
    for folder, owner_task in pools(info):
        if task_id is None or task_id == owner_task:
            deleted, busy = drop_pool(info, folder)
            click.echo(f"{owner_task}: {deleted} deleted" + (f", {busy} in use" if busy else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
