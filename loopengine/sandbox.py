"""Make, snapshot and always remove the sandbox: a git worktree, or a full copy.

Layout of one sandbox, all under one temporary folder ``base`` that removal deletes:

    base/tree/          the candidate's working tree; steps run here
    base/tree/.git/     a private repository for the steps (objects borrowed read-only
                        from the main repository through ``alternates``), so that nothing
                        a step does through git reaches the user's refs, config or hooks
    base/*.index        the engine's own temporary indexes

The engine itself reads the tree with an explicit ``--git-dir``/``--work-tree`` and a
fresh temporary index, so nothing inside the tree can hide a change from it.

A task with ``sandbox.reuse`` gets its sandbox from ``pool.py`` instead: a worktree kept
between runs and reset to the baseline; :func:`remove` then only hands it back.
"""

from __future__ import annotations

import contextlib
import filecmp
import math
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from loopengine import git
from loopengine.errors import GitError, SandboxError
from loopengine.results import locked

RUNTIME_DIRS = ("work", ".venv", ".pytest_cache")
VENV = ".venv"
EXCLUDES = tuple(f":(exclude,top){name}" for name in RUNTIME_DIRS)
PREFIX = "loopengine-"
ROOT_ENV = "LOOPENGINE_SANDBOX_ROOT"
_SHM = Path("/dev/shm")
_SHM_MIN_FREE = 2 << 30
# Check out with as many workers as there are CPUs (git's default is one).
PARALLEL_CHECKOUT = ("-c", "checkout.workers=0")
# Above this many bytes of index (about 3,000 files), `rm -rf` removes a tree faster
# than shutil.rmtree does, by more than the cost of starting it.
_LARGE_INDEX = 256 << 10


@dataclass(frozen=True)
class Sandbox:
    kind: str  # "worktree" | "copy"
    base: Path
    tree: Path
    ctx: git.Context  # how the engine reads the tree
    admin_dir: Path | None  # the worktree's entry under the main .git/worktrees/
    start_index: Path
    start_tree: str
    head: str | None
    lock_fd: int | None = None  # held while a pool member is in use; None: a fresh sandbox
    # "settled" once the start index is not racy (``settle``); mutable, outside ==/hash.
    marks: set[str] = field(default_factory=set, compare=False, hash=False, repr=False)

    def index(self, name: str) -> Path:
        return self.base / f"{name}.index"


# The start index is refreshed once the clock is this far past the second it was written
# in (file systems stamp files with a coarse clock that may lag ``time.time()`` a little).
_SETTLE_MARGIN = 0.05


def settle(sb: Sandbox) -> bool:
    """Make the start index not racy, once the clock has left the second it was written in;
    True when it is (then, and after).

    A fresh checkout writes its files and its index in the same second: git cannot trust
    the stat data of a file whose mtime is not older than the index (its racy-clean rule),
    so every later ``add -A`` and ``diff-files`` against a copy of that index re-reads and
    re-hashes those files -- the whole tree, for a tree checked out in under a second.
    ``update-index --refresh`` in a later second compares them once and writes the index
    again with a later mtime, so their stat data is trusted from then on.  It is safe at
    any time, even after a step ran: only entries whose file still has the start content
    are re-stamped, and git smudges (marks changed) a racily clean entry whose content
    differs, so a same-size edit with its mtime put back is still seen.  The content of
    the index (the start tree) never changes.
    """
    if "settled" in sb.marks:
        return True
    try:
        written = sb.start_index.stat().st_mtime
    except OSError:
        return False
    if time.time() < math.floor(written) + 1 + _SETTLE_MARGIN:
        return False  # still the same second: a refresh now would be racy again
    git.run(sb.ctx.with_index(sb.start_index), "update-index", "-q", "--refresh",
            check=False)
    sb.marks.add("settled")
    return True


def sandbox_root() -> Path:
    """``$LOOPENGINE_SANDBOX_ROOT``, else ``/dev/shm`` when usable, else the temp folder.

    tmpfs avoids the slow, erratic inode allocation of a disk file system when a tree
    of many files is made and deleted again and again.
    """
    configured = os.environ.get(ROOT_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    try:
        st = os.statvfs(_SHM)
        if (
            os.access(_SHM, os.W_OK | os.X_OK)
            and not st.f_flag & os.ST_NOEXEC
            and st.f_bavail * st.f_frsize > _SHM_MIN_FREE
        ):
            return _SHM
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def main_status(repo: git.RepoInfo) -> list[tuple[str, str]]:
    """``(XY, path)`` for every path whose working-tree state differs from HEAD."""
    data = git.run(
        repo.ctx,
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--no-renames",
        "--ignore-submodules=all",
        "--ignored=no",
        # Never walk work/ (it grows with every run) or a virtualenv, ignored or not.
        "--",
        ".",
        *EXCLUDES,
    ).stdout
    entries = []
    for item in data.split(b"\0"):
        if len(item) > 3:
            entries.append((item[:2].decode(), item[3:].decode("utf-8", "surrogateescape")))
    return entries


def _is_runtime(path: str) -> bool:
    return path.split("/", 1)[0] in RUNTIME_DIRS


def create(repo: git.RepoInfo, run_id: str, overlay: Iterable[str]) -> Sandbox:
    """A sandbox matching the main tree; removes what it made if it fails half-way."""
    base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{run_id}-", dir=sandbox_root()))
    born = base.stat().st_mtime
    (base / "owner").write_text(f"{repo.root}\n{run_id}\n")
    try:
        if repo.head is not None:
            return _create_worktree(repo, base, overlay)
        return _create_copy(repo, base)
    except BaseException:
        # An interrupt may land in `git worktree add` or just after it, before the Sandbox
        # naming the worktree's entry exists: find the entry by what it holds.
        with locked(repo.root, ".worktree.lock"):
            admin = admin_dir_into(repo.common_dir, base, since=born)
        _remove_paths(base, admin, repo)
        raise


def admin_dir_into(common_dir: Path | None, base: Path, since: float | None = None) -> Path | None:
    """The entry under ``.git/worktrees/`` whose ``gitdir`` points into ``base``, if any.

    With ``since``: else an entry with no (or an empty) ``gitdir`` made since then, left by a
    `git worktree add` killed right after it made the folder.  Call it under
    ``.worktree.lock``, so that no live run's `worktree add` is half-way.
    """
    if common_dir is None:
        return None
    inside = f"{base}{os.sep}"
    half_made = None
    with contextlib.suppress(OSError):
        for entry in (common_dir / "worktrees").iterdir():
            try:
                target = (entry / "gitdir").read_text().strip()
            except FileNotFoundError:
                target = ""
            except OSError:
                continue
            if target.startswith(inside):
                return entry
            # 2 s of slack: file systems with coarse timestamps round them down.
            with contextlib.suppress(OSError):
                if not target and since is not None and entry.stat().st_mtime >= since - 2:
                    half_made = entry
    return half_made


def _create_worktree(repo: git.RepoInfo, base: Path, overlay: Iterable[str]) -> Sandbox:
    assert repo.head is not None and repo.common_dir is not None
    tree = base / "tree"
    admin = add_worktree(repo, tree)
    ctx = private_objects(git.Context(tree, git_dir=admin, work_tree=tree), base, repo)
    start_index = base / "start.index"
    # copy2: an index keeps its mtime, or git's racy-clean check trusts stat data that a
    # same-second, same-size edit did not change, and the edit is missed.
    shutil.copy2(admin / "index", start_index)
    start_tree = finish_tree(repo, ctx, start_index, overlay, admin / "index")
    return Sandbox("worktree", base, tree, ctx, admin, start_index, start_tree, repo.head)


def add_worktree(repo: git.RepoInfo, tree: Path, *, checkout: bool = True) -> Path:
    """Register a detached worktree at HEAD (checked out unless told not to); its admin dir."""
    assert repo.head is not None
    args = ["worktree", "add", "--detach", "--quiet", *([] if checkout else ["--no-checkout"])]
    # Parallel `worktree add`/`remove` on one repository occasionally fail: take turns.
    with locked(repo.root, ".worktree.lock"):
        git.run(repo.ctx, *PARALLEL_CHECKOUT, *args, str(tree), repo.head)
    link = (tree / ".git").read_text().strip()
    if not link.startswith("gitdir:"):
        raise SandboxError(f"unexpected worktree link in {tree / '.git'}: {link!r}")
    return Path(link.removeprefix("gitdir:").strip())


def finish_tree(
    repo: git.RepoInfo, ctx: git.Context, start_index: Path, overlay: Iterable[str],
    checked_out: Path,
) -> str:
    """Lay the overlay on a tree that holds HEAD, give it its private repository and an
    empty ``work/``; the tree it starts from.

    ``start_index`` holds HEAD with fresh stat data; the overlay is staged into it path
    by path, so the tree is not scanned again.
    """
    assert repo.head is not None and repo.common_dir is not None and ctx.work_tree is not None
    tree = ctx.work_tree
    paths = _lay_overlay(repo.root, tree, [p for p in overlay if not _is_runtime(p)])
    _private_git(tree, repo.common_dir, head=repo.head, index=checked_out)
    (tree / "work").mkdir(exist_ok=True)
    link_venv(tree, project_venv(repo.root))
    staged = ctx.with_index(start_index)
    if paths:
        data = "\0".join(paths).encode("utf-8", "surrogateescape") + b"\0"
        proc = git.run(staged, "update-index", "--add", "--remove", "--replace", "-z",
                       "--stdin", input=data, check=False)
        if proc.returncode != 0:
            # A path that became a folder, say: let git stage the whole tree instead.
            return _write_tree(staged)
        return git.out(staged, "write-tree")
    if repo.head_tree is not None:
        return repo.head_tree
    return git.out(repo.ctx, "rev-parse", f"{repo.head}^{{tree}}")


def _create_copy(repo: git.RepoInfo, base: Path) -> Sandbox:
    tree = base / "tree"
    skip = {".git", *RUNTIME_DIRS}

    def ignore(folder: str, names: list[str]) -> set[str]:
        return skip.intersection(names) if Path(folder) == repo.root else set()

    # shutil.copy, not copy2: fresh mtimes (see _lay_overlay).
    shutil.copytree(repo.root, tree, symlinks=True, ignore=ignore,
                    copy_function=shutil.copy)
    if repo.is_git:
        assert repo.common_dir is not None
        ctx = private_objects(git.Context(tree, git_dir=repo.common_dir, work_tree=tree),
                              base, repo)
        _private_git(tree, repo.common_dir, head=None, branch=repo.branch)
    else:
        scratch = base / "engine.git"
        git.run(git.Context(base), "init", "--bare", "--quiet", str(scratch))
        ctx = git.Context(tree, git_dir=scratch, work_tree=tree)
    (tree / "work").mkdir(exist_ok=True)
    link_venv(tree, project_venv(repo.root))
    start_index = base / "start.index"
    start_tree = _write_tree(ctx.with_index(start_index))
    return Sandbox("copy", base, tree, ctx, None, start_index, start_tree, None)


def _lay_overlay(root: Path, tree: Path, paths: list[str]) -> list[str]:
    """Copy the main tree's uncommitted state over the checkout; the paths it changed."""
    changed = []
    for rel in paths:
        if rel.endswith("/"):
            continue  # an untracked nested repository: not part of this tree
        src, dst = root / rel, tree / rel
        if _same_file(src, dst):
            continue  # an artifact the engine lists whether or not it differs from HEAD
        changed.append(rel)
        if os.path.lexists(dst) or dst.is_symlink():
            _unlink(dst)
        if not os.path.lexists(src):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():
            # Not copy2: an old mtime would make git trust the stat data of a file
            # that a step rewrites (same size, mtime put back) within a second.
            shutil.copy(src, dst)
    return changed


def _same_file(a: Path, b: Path) -> bool:
    """Two regular files (not links) with the same content and executable bit."""
    try:
        sa, sb = a.lstat(), b.lstat()
    except OSError:
        return False
    if not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)):
        return False
    if sa.st_size != sb.st_size or (sa.st_mode ^ sb.st_mode) & stat.S_IXUSR:
        return False
    return filecmp.cmp(a, b, shallow=False)


def _unlink(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _private_git(
    tree: Path, common_dir: Path, *, head: str | None, index: Path | None = None,
    branch: str | None = None,
) -> None:
    """Give the steps a repository of their own in place of the worktree link."""
    dot_git = tree / ".git"
    if dot_git.is_file() or dot_git.is_symlink():
        dot_git.unlink()
    (dot_git / "objects" / "info").mkdir(parents=True)
    (dot_git / "refs" / "heads").mkdir(parents=True)
    (dot_git / "refs" / "tags").mkdir()
    (dot_git / "objects" / "info" / "alternates").write_text(f"{common_dir / 'objects'}\n")
    (dot_git / "HEAD").write_text(f"{head}\n" if head else f"ref: {branch or 'refs/heads/main'}\n")
    (dot_git / "config").write_text(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
    )
    if index is not None:
        shutil.copy2(index, dot_git / "index")


def _write_tree(ctx: git.Context) -> str:
    """Stage the whole tree (ignored files too: nothing may hide) and write a tree object."""
    # A large file is streamed into a pack, never read whole into git's memory.
    git.run(ctx, "-c", "core.bigFileThreshold=16m", "add", "-A", "-f", "--", ".", *EXCLUDES)
    return git.out(ctx, "write-tree")


def project_venv(root: Path) -> Path | None:
    """The real path of the project's ``.venv`` folder, if it has one."""
    venv = root / VENV
    if not venv.is_dir():
        return None
    return Path(os.path.realpath(venv))


def link_venv(tree: Path, venv: Path | None) -> None:
    """Give the sandbox the project's environment as it is: ``.venv`` a symbolic link to
    the main tree's.  Never copied (slow, and a copied venv's scripts still name the
    original), never validated (it is not the candidate); under bwrap it is read-only."""
    if venv is not None:
        os.symlink(venv, tree / VENV, target_is_directory=True)


def editable_paths(venv: Path, root: Path, tree: Path) -> list[str]:
    """The sandbox's counterparts of the main tree's folders that the project's
    environment imports from (editable installs: path lines of ``site-packages/*.pth``).

    Put first on ``PYTHONPATH``, they make ``import yourpackage`` in a step load the
    candidate's code, not the main tree's (which bwrap hides anyway).
    """
    found: list[str] = []
    real_root = Path(os.path.realpath(root))
    for pth in sorted(venv.glob("lib/python*/site-packages/*.pth")):
        try:
            lines = pth.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            path = Path(os.path.realpath(line))
            if not path.is_absolute() or not path.is_relative_to(real_root):
                continue
            mapped = tree / path.relative_to(real_root)
            if mapped.is_dir() and str(mapped) not in found:
                found.append(str(mapped))
    return found


def has_venv_link(tree: Path, venv: Path | None) -> bool:
    link = tree / VENV
    return venv is not None and link.is_symlink() and os.readlink(link) == str(venv)


def venv_env(tree: Path, root: Path | None) -> dict[str, str]:
    """More environment for a step in ``tree`` when the project's .venv is linked in:
    `uv run` uses it as it is (a sync would rebuild it, or rewrite the user's environment
    through the link), and the project's own editable packages import from the sandbox,
    not from the main tree ``root``."""
    link = tree / VENV
    if not link.is_symlink():
        return {}
    env = {"UV_NO_SYNC": "1"}
    paths = editable_paths(Path(os.readlink(link)), root, tree) if root is not None else []
    if paths:
        inherited = os.environ.get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join([*paths, *([inherited] if inherited else [])])
    return env


def clear_runtime(tree: Path, venv: Path | None = None) -> None:
    """Put ``work/`` (empty), ``.pytest_cache/`` (absent) and ``.venv`` (the link to the
    project's environment ``venv``, or absent) back as a fresh sandbox has them.  They are
    never validated, so what the mutator left there must not reach the runner or the
    scorer."""
    for name in RUNTIME_DIRS:
        path = tree / name
        if name == VENV and has_venv_link(tree, venv):
            continue  # our own link: what it points to is the project's, not the mutator's
        if path.is_dir() and not path.is_symlink():
            _rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    (tree / "work").mkdir()
    if not os.path.lexists(tree / VENV):
        link_venv(tree, venv)


def snapshot(sb: Sandbox, name: str) -> str:
    """The tree object of the sandbox as it is now, read with a fresh index."""
    index = sb.index(name)
    settle(sb)
    shutil.copy2(sb.start_index, index)  # keeps the mtime: see _create_worktree
    try:
        return _write_tree(sb.ctx.with_index(index))
    except GitError as exc:
        raise SandboxError(f"could not read the sandbox: {exc}") from exc


def hand_over(sb: Sandbox) -> None:
    """``--keep-sandbox``: give the kept tree its worktree link back.

    With the steps' private repository swapped for the link, ``git status`` in the kept
    tree shows the candidate against HEAD, and ``git worktree remove --force`` removes it.
    """
    if sb.admin_dir is None:
        return
    dot_git = sb.tree / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        _rmtree(dot_git)
    elif os.path.lexists(dot_git):
        dot_git.unlink()
    dot_git.write_text(f"gitdir: {sb.admin_dir}\n")


def remove(sb: Sandbox, repo: git.RepoInfo) -> None:
    """Delete a fresh sandbox; hand a pool member back (its reset waits for its next use)."""
    if sb.lock_fd is not None:
        os.close(sb.lock_fd)
        return
    try:
        large = sb.start_index.stat().st_size > _LARGE_INDEX
    except OSError:
        large = False
    _remove_paths(sb.base, sb.admin_dir, repo, large=large)


def _remove_paths(
    base: Path, admin_dir: Path | None, repo: git.RepoInfo, *, large: bool = False
) -> None:
    _rmtree(base, large=large)
    if admin_dir is not None:
        # Unregister exactly our worktree; never a global `git worktree prune`.
        with locked(repo.root, ".worktree.lock"):
            _rmtree(admin_dir)


def _rmtree(path: Path, *, large: bool = False) -> None:
    if large and os.path.lexists(path):
        with contextlib.suppress(OSError):  # no rm: shutil does it all
            subprocess.run(["rm", "-rf", "--", str(path)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    def onerror(func: object, p: str, exc: object) -> None:
        # A step may leave read-only folders behind; make them writable and retry.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=onerror)


def promote(sb: Sandbox, repo: git.RepoInfo, shas: Iterable[str]) -> None:
    """Copy the objects ``shas`` from the sandbox's private object store into the user's,
    exactly those (a kept artifact's blobs, a candidate ref's): nothing else the engine
    wrote while it read the candidate ever reaches the user's ``.git/objects``."""
    if not repo.is_git:
        return
    git.promote(sb.ctx, repo.ctx, list(shas))


def private_objects(ctx: git.Context, base: Path, repo: git.RepoInfo) -> git.Context:
    """``ctx`` writing its objects into ``base/objects`` (made here), reading the user's."""
    assert repo.common_dir is not None
    store = base / "objects"
    (store / "info").mkdir(parents=True, exist_ok=True)
    (store / "pack").mkdir(exist_ok=True)
    return ctx.with_objects(store, repo.common_dir / "objects")
