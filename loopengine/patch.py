"""An agent's patch: read it once, apply it to a tree, three-way when the tree moved on.

``read`` copies the patch (a file, a pipe, ``/dev/stdin`` or ``-`` for standard input)
into the run folder once, within a time limit, so that git only ever reads a plain file
and a patch that never arrives cannot hang the run.  ``apply`` runs ``git apply``; when
the patch was made against an older version of the files (two candidates raced and one
was kept) and no longer applies, it applies it with a three-way merge against the blobs
its ``index`` lines name, as ``git apply -3`` does.  A real conflict is an answer (the
conflicting paths), not an error.
"""

from __future__ import annotations

import io
import os
import re
import select
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from loopengine import git
from loopengine.errors import LoopError

STDIN = "-"
_CHUNK = 1 << 16
# An all-blank patch this small is an empty one; a larger file is read as a patch.
_EMPTY_SCAN = 1 << 16
_INDEX_LINE = re.compile(rb"^index [0-9a-f]{4,}\.\.[0-9a-f]{4,}", re.MULTILINE)
# git's hints name options of git's, which loopengine does not have: `(allow with
# "--allow-empty")`, `(use "--reject" ...)`.  They would send the agent the wrong way.
_GIT_HINT = re.compile(r"\s*\([^()]*\"?--[a-z][a-z0-9-]*\"?[^()]*\)")
_CONFLICT = re.compile(r"^U (.+)$", re.MULTILINE)
_APPLIED_WITH_CONFLICTS = re.compile(r"^Applied patch to '(.+)' with conflicts\.$", re.MULTILINE)


class PatchReadError(LoopError):
    """The patch could not be read (not: does not apply). The message never blames the
    patch's paths, which were never looked at."""

    crash_kind = "mutator"


def label(source: str | Path) -> str:
    """How messages name the patch: its path as given, or standard input."""
    return "from standard input" if str(source) == STDIN else str(source)


def read(source: str | Path, dest: Path, *, timeout: float) -> Path:
    """Copy the patch into ``dest``, reading the source once; ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(timeout, 0.0)
    name = label(source)
    try:
        if str(source) == STDIN:
            _read_stdin(dest, deadline)
        else:
            _read_path(Path(source), dest, deadline)
    except PatchReadError:
        raise
    except TimeoutError as exc:  # before OSError, whose subclass it is
        raise PatchReadError(f"the patch {name} was still not complete after "
                             f"{timeout:.3g}s (budget.max_seconds); write the patch to a "
                             "file or close the pipe") from exc
    except OSError as exc:
        raise PatchReadError(f"cannot read the patch {name}: "
                             f"{exc.strerror or exc}") from exc
    return dest


def _read_stdin(dest: Path, deadline: float) -> None:
    stream: BinaryIO = getattr(sys.stdin, "buffer", sys.stdin)  # type: ignore[assignment]
    try:
        fd = stream.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):
        # An in-memory stdin (click's test runner): nothing can block.
        with open(dest, "wb") as out:
            shutil.copyfileobj(stream, out, _CHUNK)
        return
    if os.isatty(fd):
        raise PatchReadError("--patch -: standard input is a terminal, not a patch; pipe "
                             "the patch in (`git diff | loopengine run --task T --patch -`) "
                             "or give its file")
    _copy_fd(fd, dest, deadline)


def _read_path(path: Path, dest: Path, deadline: float) -> None:
    # O_NONBLOCK: opening a named pipe with no writer would otherwise wait for ever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise PatchReadError(f"cannot read the patch {path}: it is a directory")
        _copy_fd(fd, dest, deadline)
    finally:
        os.close(fd)


def _copy_fd(fd: int, dest: Path, deadline: float) -> None:
    """Stream ``fd`` to ``dest`` until end of file or the deadline."""
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    with open(dest, "wb") as out:
        while True:
            if not regular:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    raise TimeoutError
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                return
            out.write(chunk)


def is_empty(path: Path) -> bool:
    """No bytes, or only blank lines: a candidate with no change."""
    size = path.stat().st_size
    if size > _EMPTY_SCAN:
        return False
    return not path.read_bytes().strip()


# ---------------------------------------------------------------------------
# Applying


@dataclass(frozen=True)
class Applied:
    """What ``git apply`` made of a patch: applied (perhaps by a three-way merge), in
    conflict (``conflicts`` names the files), or refused (``reason`` says why)."""

    ok: bool
    output: str
    three_way: bool = False
    conflicts: list[str] = field(default_factory=list)
    reason: str = ""


def apply(tree: git.Context, patch: Path, *, index: Path | None = None) -> Applied:
    """Apply ``patch`` (a plain file) to the work tree of ``tree``.

    ``index`` is a scratch index that matches the work tree (a copy of the start index):
    the three-way merge needs one, and it keeps the tree's own index out of it.  Without
    it, or without ``index`` lines in the patch, there is no three-way merge.
    """
    # --whitespace=nowarn: the patch applies byte for byte, whatever the user's
    # apply.whitespace says (error would refuse it, fix would change it).
    args = ("-c", "apply.ignoreWhitespace=no", "apply", "--verbose", "--whitespace=nowarn")
    plain = git.run(tree, *args, "--", str(patch), check=False)
    text = _text(plain)
    if plain.returncode == 0:
        return Applied(True, text)
    why = describe_failure(text)
    if index is None or not _has_index_lines(patch):
        return Applied(False, text, reason=why)
    scratch = tree.with_index(index)
    git.run(scratch, "update-index", "-q", "--refresh", check=False)
    merged = git.run(scratch, *args, "--3way", "--", str(patch), check=False)
    both = f"{text}\n$ git apply --3way\n{_text(merged)}"
    if merged.returncode == 0:
        return Applied(True, both, three_way=True)
    merged_text = _text(merged)
    conflicts = sorted(set(_CONFLICT.findall(merged_text))
                       | set(_APPLIED_WITH_CONFLICTS.findall(merged_text)))
    if conflicts:
        return Applied(False, both, three_way=True, conflicts=conflicts)
    # The merge could not even start (the blobs it names are unknown here): the plain
    # apply's complaint is the one that helps.
    return Applied(False, both, reason=why)


def _has_index_lines(patch: Path) -> bool:
    with open(patch, "rb") as fh:
        return any(_INDEX_LINE.match(line) for line in fh)


def _text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return (proc.stdout + proc.stderr).decode("utf-8", "replace")


def describe_failure(output: str) -> str:
    """git apply's complaints, short: ``patch failed: notes.md:3``, not the echoed context,
    and without git's hints for options loopengine does not have."""
    found: list[str] = []
    for line in output.splitlines():
        head, _, message = line.partition(": ")
        if head not in ("error", "fatal") or message.startswith("while searching for"):
            continue
        failed = message.removesuffix(": patch does not apply")
        if failed != message and any(f.startswith(f"patch failed: {failed}:") for f in found):
            continue  # says again what "patch failed: path:line" said
        message = _GIT_HINT.sub("", message).strip()
        if message and message not in found:
            found.append(message)
    why = "; ".join(found)[:500]
    if "No such file or directory" in why or "does not exist in index" in why:
        why += (" (paths are relative to the repository root, with a/ and b/ prefixes, "
                "as git diff writes them)")
    return why or "git apply failed"


def conflict_reason(conflicts: list[str]) -> str:
    shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more"
                                        if len(conflicts) > 5 else "")
    return (f"the patch conflicts with the current baseline in {shown}: it was made "
            "against an older version, and a three-way merge left conflicts; make it "
            "again against the tree as it is now")
