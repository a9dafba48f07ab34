"""Where the engine may write: one rule for every path it appends to or creates.

``write_problem`` is the part of the rule that needs no task and no git: a path the engine
writes (a results file, a file named by a run's metadata) must stay inside the repository
once every symlink is resolved, must not reach into git's own folder (appending a JSON
line to ``.git/config`` or ``.git/HEAD`` breaks every git command; appending to a hook runs
code on the user's next commit), and must not be a directory or anything but a plain
file.  The task-dependent part (a tracked file, an artifact, the task file itself) is in
``task.results_path_problem``.

Recovery applies the same rule to paths it reads from ``work/`` (a step could have written
them), so nothing it writes can land where a task file could not point.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path
from typing import Final

# Repository-root folders that hold runtime state; no artifact may live there.
RESERVED_DIRS: Final = frozenset({".git", "work", ".venv", ".pytest_cache"})

# Files git reads from the working tree: a line appended to one changes what git does.
GIT_FILES: Final = frozenset({".gitattributes", ".gitignore", ".gitmodules", ".mailmap"})

# Folders whose content is the project's tooling, not a place for records.
_OFF_LIMITS: Final = frozenset({".git", ".venv"})

# The engine's own state under work/: a line appended to a baseline store, a run's record
# or journal, or a loop's state damages it.  (work/results.jsonl and other plain files
# directly in work/ are fine.)
ENGINE_STATE: Final = frozenset({"runs", "baselines", "loops"})


def write_problem(root: Path, rel: str) -> str | None:
    """Why the engine must not write the repo-relative path ``rel`` under ``root``, or None.

    The answer is a phrase that follows the path in a message (``is inside .git/``).
    Symlinks are followed: a link inside the repository that points at ``.git/HEAD`` or
    outside the repository is as bad as the path it points to.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return "is not a path"
    if rel.startswith("/") or os.path.isabs(rel):
        return "must be relative to the repository root"
    norm = posixpath.normpath(rel)
    if norm == "." or norm.endswith("/."):
        return "is a directory"
    if norm == ".." or norm.startswith("../"):
        return "is outside the repository"
    lexical = _named_problem(norm.split("/"))
    if lexical:
        return lexical
    try:
        real_root = root.resolve()
        target = (real_root / norm).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return "cannot be resolved (a symlink loop?)"
    try:
        inside = target.relative_to(real_root)
    except ValueError:
        return "is outside the repository (after resolving symlinks)"
    if not inside.parts:
        return "is a directory"
    resolved = _named_problem(list(inside.parts))
    if resolved:
        return f"{resolved} (after resolving symlinks)"
    if _inside_git_dir(real_root, target):
        return "is inside the repository's git directory"
    return _kind_problem(target)


def _named_problem(parts: list[str]) -> str | None:
    # casefold: on a case-insensitive filesystem ".GIT/config" is ".git/config".
    for part in parts[:-1]:
        if part.casefold() in _OFF_LIMITS:
            return f"is inside {part}/"
    if len(parts) > 1 and parts[0].casefold() == "work":
        inner = parts[1].casefold()
        if inner in ENGINE_STATE:
            return f"is the engine's own state (work/{parts[1]}/)"
        if inner.startswith(".") and len(parts) == 2:
            return "is one of the engine's lock files (work/.*)"
    name = parts[-1].casefold()
    if name in _OFF_LIMITS:
        return f"is {parts[-1]}/ itself"
    if name in GIT_FILES:
        return f"is {parts[-1]}, a file git reads"
    return None


def _inside_git_dir(root: Path, target: Path) -> bool:
    """A ``.git`` *file* (a linked worktree, a submodule) names the git dir elsewhere."""
    dot_git = root / ".git"
    try:
        if not dot_git.is_file():
            return False
        text = dot_git.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if not text.startswith("gitdir:"):
        return False
    git_dir = (root / text[len("gitdir:"):].strip()).resolve()
    return target == git_dir or git_dir in target.parents


def _kind_problem(target: Path) -> str | None:
    try:
        st = target.stat()
    except FileNotFoundError:
        return _parent_problem(target)
    except NotADirectoryError:
        return "has a parent that is a file, not a folder"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_mode & 0o111:
        # A hook or a script outside .git (core.hooksPath, husky): appending runs code.
        return "is an executable file"
    return None


def _parent_problem(target: Path) -> str | None:
    for parent in target.parents:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"cannot be examined ({exc.strerror})"
        if not stat.S_ISDIR(st.st_mode):
            return "has a parent that is a file, not a folder"
        return None
    return None
