"""The git calls the engine needs, with stable flags and a clean environment.

Every call goes through :func:`run`: no inherited ``GIT_*`` variable can point git at
another repository or index, and ``-c`` flags override whatever the user's configuration
says about hooks, fsmonitor, colours, pagers, external diff drivers, line endings and
signing, so the engine reads the same bytes under any configuration.  Plain ``git``
processes are used rather than GitPython here: they are faster on the hot path and keep
no ``cat-file`` process alive between calls.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from loopengine.errors import GitError

GIT_TIMEOUT = 600.0
NULL_SHA = "0" * 40  # a SHA-1 repository's; see null_sha for the repository's own

# Applied to every call, whatever the user's configuration says.
HARDENED_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.quotePath=false",
    # core.autocrlf is the user's: the sandbox is checked out, and the keep written, with
    # the line endings of the user's checkout.  (The engine reads trees, not files.)
    "core.safecrlf=false",
    "core.fileMode=true",
    "core.trustctime=true",  # a step can reset mtime, not ctime
    "core.checkStat=default",
    "core.symlinks=true",
    "core.pager=cat",
    "core.splitIndex=false",
    "core.ignoreStat=false",  # true would skip the stat check altogether
    "color.ui=false",
    "diff.noprefix=false",
    "diff.mnemonicPrefix=false",
    "diff.external=",
    "diff.renames=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "add.ignoreErrors=false",  # true would let an unreadable file slip past the validation
    "submodule.recurse=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "advice.detachedHead=false",
    "protocol.file.allow=never",
)

# Inherited variables that would point git at another repository, index or config.  Steps
# run without them too (process.step_env), so a step's git sees its own sandbox.
REPO_VAR_PREFIXES = ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")
REPO_VARS = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_PREFIX",
        "GIT_CEILING_DIRECTORIES",
        "GIT_DISCOVERY_ACROSS_FILESYSTEM",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_QUARANTINE_PATH",
        "GIT_REFLOG_ACTION",
    }
)
# The engine's own calls also drop what would change what it reads or make git wait.
_DROPPED = REPO_VARS | {
    "GIT_EXTERNAL_DIFF",
    "GIT_DIFF_OPTS",
    "GIT_PAGER",
    "GIT_EDITOR",
    "GIT_SEQUENCE_EDITOR",
    "GIT_TRACE",
    "GIT_TRACE2",
    "GIT_TRACE2_EVENT",
    "GIT_TRACE2_PERF",
    "GIT_FLUSH",
    "GIT_ASKPASS",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
}
_DROPPED_PREFIXES = REPO_VAR_PREFIXES


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without git-steering variables."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k not in _DROPPED and not k.startswith(_DROPPED_PREFIXES)
    }
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_OPTIONAL_LOCKS"] = "0"
    env["LC_ALL"] = "C"
    env["LANGUAGE"] = "C"
    return env


_BASE_ENV: dict[str, str] | None = None


def _env(ctx: Context, extra: Mapping[str, str] | None) -> dict[str, str]:
    global _BASE_ENV
    if _BASE_ENV is None:
        _BASE_ENV = clean_env()
    env = dict(_BASE_ENV)
    if ctx.index_file is not None:
        env["GIT_INDEX_FILE"] = str(ctx.index_file)
    if ctx.object_dir is not None:
        # The engine's own objects (the candidate's blobs and trees) go to a store of the
        # sandbox's; the repository's objects are read through it as an alternate.
        env["GIT_OBJECT_DIRECTORY"] = str(ctx.object_dir)
        if ctx.alternate is not None:
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str(ctx.alternate)
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Context:
    """Where a git call looks: a directory, or an explicit git dir and work tree."""

    cwd: Path
    git_dir: Path | None = None
    work_tree: Path | None = None
    index_file: Path | None = None
    object_dir: Path | None = None  # where new objects go (a sandbox's private store)
    alternate: Path | None = None  # the repository's objects, read through object_dir

    def with_index(self, index_file: Path | None) -> Context:
        return dataclasses.replace(self, index_file=index_file)

    def with_objects(self, object_dir: Path, alternate: Path) -> Context:
        return dataclasses.replace(self, object_dir=object_dir, alternate=alternate)


def command(ctx: Context, args: Sequence[str]) -> list[str]:
    cmd = ["git"]
    for item in HARDENED_CONFIG:
        cmd += ["-c", item]
    if ctx.git_dir is not None:
        cmd.append(f"--git-dir={ctx.git_dir}")
    if ctx.work_tree is not None:
        cmd.append(f"--work-tree={ctx.work_tree}")
    cmd += list(args)
    return cmd


def run(
    ctx: Context,
    *args: str,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float = GIT_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    cmd = command(ctx, args)
    try:
        proc = subprocess.run(
            cmd,
            cwd=ctx.cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=_env(ctx, env),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {' '.join(args)}: timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise GitError(_describe(args, proc))
    return proc


def run_to(ctx: Context, fh: IO[bytes], *args: str,
           timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run git with its stdout streamed into ``fh`` (a blob of any size never passes
    through this process's memory); stderr is captured."""
    try:
        return subprocess.run(command(ctx, args), cwd=ctx.cwd, stdin=subprocess.DEVNULL,
                              stdout=fh, stderr=subprocess.PIPE, env=_env(ctx, None),
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {' '.join(args)}: timed out after {timeout:.0f}s") from exc


def out(ctx: Context, *args: str, input: bytes | None = None) -> str:
    """stdout of a successful call, decoded, with the final newline removed."""
    return run(ctx, *args, input=input).stdout.decode("utf-8", "surrogateescape").rstrip("\n")


def _describe(args: Sequence[str], proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = [f"git {' '.join(args)} failed with exit code {proc.returncode}"]
    for name, data in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        # git's `hint:` lines advise git's own options and commands, not loopengine's.
        text = "\n".join(line for line in data.decode("utf-8", "replace").splitlines()
                         if not line.startswith("hint:")).strip()
        if text:
            lines.append(f"{name}: {text[-2000:]}")
    return "\n".join(lines)


def split_z(data: bytes) -> list[str]:
    """Split ``-z`` output into paths (decoded losslessly)."""
    return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0") if p]


# ---------------------------------------------------------------------------
# Repository discovery


@dataclass(frozen=True)
class RepoInfo:
    """What the engine needs to know about the user's repository."""

    root: Path
    git_dir: Path | None  # this work tree's git dir (a linked worktree has its own)
    common_dir: Path | None  # where objects, refs, config and hooks live
    head: str | None  # sha of HEAD, None when unborn or not a repository
    branch: str | None  # full ref name of the current branch, None when detached
    head_tree: str | None = None  # sha of HEAD's tree, when repo_info read it

    @property
    def is_git(self) -> bool:
        return self.git_dir is not None

    @property
    def ctx(self) -> Context:
        return Context(self.root)


def toplevel(path: Path) -> Path | None:
    proc = run(Context(path), "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        return None
    return Path(proc.stdout.decode("utf-8", "surrogateescape").rstrip("\n"))


def repo_info(root: Path) -> RepoInfo:
    """Describe ``root``; a git repository only when ``root`` is its top level."""
    # One process for the common case (a branch or a detached HEAD with a commit); an
    # unborn HEAD makes it fail and takes the longer way below.
    proc = run(
        Context(root),
        "rev-parse",
        "--show-toplevel",
        "--absolute-git-dir",
        "--git-common-dir",
        "HEAD^{commit}",
        "HEAD^{tree}",
        "--symbolic-full-name",
        "HEAD",
        check=False,
    )
    lines = proc.stdout.decode("utf-8", "surrogateescape").splitlines()
    if proc.returncode == 0 and len(lines) == 6:
        if Path(lines[0]).resolve() != root.resolve():
            return RepoInfo(root, None, None, None, None)
        common = Path(lines[2])
        if not common.is_absolute():
            common = (root / common).resolve()
        branch = lines[5] if lines[5].startswith("refs/") else None
        return RepoInfo(root, Path(lines[1]), common, lines[3], branch, lines[4])
    proc = run(
        Context(root),
        "rev-parse",
        "--show-toplevel",
        "--absolute-git-dir",
        "--git-common-dir",
        check=False,
    )
    lines = proc.stdout.decode("utf-8", "surrogateescape").splitlines()
    if proc.returncode != 0:
        refused(proc.stderr)
    if proc.returncode != 0 or len(lines) < 3 or Path(lines[0]).resolve() != root.resolve():
        return RepoInfo(root, None, None, None, None)
    git_dir = Path(lines[1])
    common = Path(lines[2])
    if not common.is_absolute():
        common = (root / common).resolve()
    head_proc = run(Context(root), "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False)
    head = head_proc.stdout.decode().strip() if head_proc.returncode == 0 else None
    ref_proc = run(Context(root), "symbolic-ref", "-q", "HEAD", check=False)
    branch = ref_proc.stdout.decode().strip() if ref_proc.returncode == 0 else None
    return RepoInfo(root, git_dir, common, head, branch)


class UnsafeRepository(GitError):
    """Git refuses the repository (``safe.directory``): say what git says, and the fix."""

    crash_kind = "sandbox"


def refused(stderr: bytes) -> None:
    """Raise :class:`UnsafeRepository` when git's complaint is that it will not use the
    repository at all (dubious ownership), instead of taking it for no repository."""
    text = stderr.decode("utf-8", "replace")
    if "dubious ownership" not in text and "safe.directory" not in text:
        return
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    why = lines[0].removeprefix("fatal: ") if lines else "git refuses the repository"
    fix = next((line for line in lines if line.startswith("git config")), None)
    raise UnsafeRepository(
        f"git refuses to use this repository: {why} (it belongs to another user than the "
        "one running loopengine)"
        + (f"; if you trust it, run: {fix}" if fix else "; see `git help config`, "
           "safe.directory"))


def operation_in_progress(git_dir: Path) -> str | None:
    """The name of a merge, rebase, cherry-pick, revert or bisect under way, if any."""
    markers = {
        "MERGE_HEAD": "a merge",
        "rebase-merge": "a rebase",
        "rebase-apply": "a rebase",
        "CHERRY_PICK_HEAD": "a cherry-pick",
        "REVERT_HEAD": "a revert",
    }
    for name, what in markers.items():
        if (git_dir / name).exists():
            return what
    return None


def identity(ctx: Context) -> dict[str, str]:
    """Author and committer for engine commits: the user's if configured, else a fixed one."""
    proc = run(ctx, "config", "--get-regexp", r"^user\.(name|email)$", check=False)
    found: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        found[key] = value
    name = found.get("user.name") or "loopengine"
    email = found.get("user.email") or "loopengine@localhost"
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


# ---------------------------------------------------------------------------
# Object names: SHA-1 or SHA-256, whatever the repository uses


def null_sha(repo: RepoInfo) -> str:
    """The all-zero object name of the repository's hash (40 or 64 digits)."""
    if repo.head:
        return "0" * len(repo.head)
    if not repo.is_git:
        return NULL_SHA
    fmt = run(repo.ctx, "rev-parse", "--show-object-format", check=False).stdout.strip()
    return "0" * (64 if fmt == b"sha256" else 40)


def blob_id(path: Path, digits: int = 40) -> str:
    """The object name ``git hash-object --no-filters`` gives the file, read in chunks."""
    h = hashlib.sha256() if digits == 64 else hashlib.sha1()
    size = path.stat().st_size
    h.update(f"blob {size}\0".encode())
    with open(path, "rb", buffering=0) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_CONVERSIONS = ("filter", "eol", "text", "ident", "working-tree-encoding", "crlf")


def attributes(ctx: Context, path: str) -> dict[str, str]:
    """The attributes of ``path`` that change bytes between the index and the tree."""
    return attributes_of(ctx, [path]).get(path, {})


def attributes_of(ctx: Context, paths: Sequence[str]) -> dict[str, dict[str, str]]:
    """:func:`attributes` of many paths, in two git calls; paths with none are left out."""
    if not paths:
        return {}
    data = "\0".join(paths).encode("utf-8", "surrogateescape") + b"\0"
    proc = run(ctx, "check-attr", "-z", "--stdin", *_CONVERSIONS, input=data, check=False)
    parts = proc.stdout.split(b"\0")
    found: dict[str, dict[str, str]] = {}
    for i in range(0, len(parts) - 2, 3):
        path = parts[i].decode("utf-8", "surrogateescape")
        name = parts[i + 1].decode("utf-8", "replace")
        value = parts[i + 2].decode("utf-8", "replace")
        if value != "unspecified":
            found.setdefault(path, {})[name] = value
    auto = run(ctx, "config", "--get", "core.autocrlf", check=False).stdout.strip()
    if auto and auto != b"false":
        for path in paths:
            attrs = found.setdefault(path, {})
            if attrs.get("text") not in ("unset", "false"):
                attrs.setdefault("core.autocrlf", auto.decode("utf-8", "replace"))
    return found


def promote(source: Context, target: Context, shas: Sequence[str]) -> None:
    """Copy the objects ``shas`` that ``target``'s store lacks from ``source``'s store
    (a sandbox's private one), exactly those: ``pack-objects`` into ``unpack-objects``,
    streamed, so a large blob never passes through this process."""
    wanted = [s for s in dict.fromkeys(shas) if s and s.strip("0")]
    if not wanted:
        return
    listed = run(target, "cat-file", "--batch-check=%(objectname)",
                 input="".join(f"{s}\n" for s in wanted).encode()).stdout.decode()
    missing = [line.split()[0] for line in listed.splitlines() if line.endswith(" missing")]
    if not missing:
        return
    big = ("-c", "core.bigFileThreshold=16m")  # stream large blobs, never hold them whole
    pack = subprocess.Popen(command(source, [*big, "pack-objects", "-q", "--stdout"]),
                            cwd=source.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(source, None))
    assert pack.stdin is not None and pack.stdout is not None
    try:
        unpack = subprocess.Popen(command(target, [*big, "unpack-objects", "-q"]),
                                  cwd=target.cwd, stdin=pack.stdout, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=_env(target, None))
        pack.stdout.close()
        pack.stdin.write("".join(f"{s}\n" for s in missing).encode())
        pack.stdin.close()
        _, unpack_err = unpack.communicate(timeout=GIT_TIMEOUT)
        pack_err = pack.stderr.read() if pack.stderr is not None else b""
        pack.wait(timeout=GIT_TIMEOUT)
    except BaseException:
        pack.kill()
        pack.wait()
        raise
    if pack.returncode != 0 or unpack.returncode != 0:
        raise GitError("could not copy the kept objects into the repository: "
                       f"{(pack_err + unpack_err).decode('utf-8', 'replace').strip()[-2000:]}")
