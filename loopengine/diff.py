"""The candidate's real diff (git's raw diff and line counts) and the limit violations it
shows."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loopengine import git
from loopengine.errors import GitError
from loopengine.task import Task, match_artifact

SYMLINK_MODE = "120000"
GITLINK_MODE = "160000"
NO_MODE = "000000"
REGULAR_MODES = frozenset({"100644", "100755"})


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # A added, M modified, D deleted, T type changed
    old_mode: str
    new_mode: str
    old_sha: str
    new_sha: str
    added: int
    removed: int
    binary: bool

    @property
    def mode_changed(self) -> bool:
        # Only a regular file's executable bit; a file <-> link change is a type change,
        # reported once as "symlink", not a second time as a mode change.
        modes = {self.old_mode, self.new_mode}
        return len(modes) == 2 and modes <= REGULAR_MODES


@dataclass(frozen=True)
class DiffStats:
    files: tuple[FileChange, ...]
    patch: bytes

    @property
    def changed_files(self) -> list[str]:
        return sorted(f.path for f in self.files)

    @property
    def insertions(self) -> int:
        return sum(f.added for f in self.files)

    @property
    def deletions(self) -> int:
        return sum(f.removed for f in self.files)

    @property
    def changed_lines(self) -> int:
        return self.insertions + self.deletions

    @property
    def summary(self) -> str:
        if not self.files:
            return ""
        return summary(len(self.files), self.insertions, self.deletions)


EMPTY = DiffStats((), b"")


def summary(files: int, insertions: int, deletions: int) -> str:
    def plural(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    return (
        f"{plural(files, 'file', 'files')} changed, "
        f"{plural(insertions, 'insertion(+)', 'insertions(+)')}, "
        f"{plural(deletions, 'deletion(-)', 'deletions(-)')}"
    )


def read_diff(ctx: git.Context, start_tree: str, cand_tree: str,
              patch_path: Path | None = None) -> DiffStats:
    """Every change from ``start_tree`` to ``cand_tree``: new, deleted, mode, binary.

    Lines are counted as git counts them (``--numstat``).  With ``patch_path`` the patch is
    streamed into that file (``DiffStats.patch`` stays empty): a candidate's size is never
    held in memory.  Without it, the patch is read into ``DiffStats.patch``."""
    if start_tree == cand_tree:
        return EMPTY
    raw = git.run(
        ctx, "diff-tree", "-r", "-z", "--no-renames", "--raw", "--no-abbrev",
        "--ignore-submodules=none", start_tree, cand_tree,
    ).stdout
    entries = _parse_raw(raw)
    counts = _numstat(ctx, start_tree, cand_tree)
    if len(counts) != len(entries):
        raise GitError(f"git diff-tree listed {len(entries)} changes but counted "
                       f"{len(counts)}")
    huge = _huge_binaries(ctx, entries, counts)
    args = ["diff-tree", "-r", "-p", "--binary", "--full-index", "--no-renames",
            "--no-ext-diff", "--no-textconv", "--no-color", "--src-prefix=a/",
            "--dst-prefix=b/", start_tree, cand_tree]
    if huge:  # git would load them to write even "Binary files differ": leave them out
        args += ["--", ".", *(f":(exclude,literal){p}" for p in huge)]
    stanzas = b"".join(
        f"diff --git a/{p} b/{p}\nBinary files a/{p} and b/{p} differ (left out of this "
        "patch: too large)\n".encode("utf-8", "surrogateescape") for p in huge)
    if patch_path is None:
        patch = git.run(ctx, *args).stdout + stanzas
    else:
        patch = b""
        patch_path.parent.mkdir(parents=True, exist_ok=True)
        with open(patch_path, "wb") as fh:
            proc = git.run_to(ctx, fh, *args)
            fh.write(stanzas)
        if proc.returncode != 0:
            raise GitError(f"git diff-tree -p failed: "
                           f"{proc.stderr.decode('utf-8', 'replace').strip()[-2000:]}")
    files = tuple(
        FileChange(path, status, om, nm, os_, ns, added, removed, binary)
        for (path, status, om, nm, os_, ns), (added, removed, binary) in zip(
            entries, counts, strict=True
        )
    )
    return DiffStats(files, patch)




# A file larger than this is a binary change to git's diff, which then never loads it (a
# 300 MB file the mutator wrote costs no memory; a text artifact that large is no text).
BIG = ("-c", "core.bigFileThreshold=64m")
# Above this size a binary change is left out of candidate.patch (it is a discard anyway,
# and the patch would be larger than the file): "Binary files ... differ" stands for it.
_BINARY_IN_PATCH = 16 << 20


def _huge_binaries(ctx: git.Context, entries: list[tuple[str, str, str, str, str, str]],
                   counts: list[tuple[int, int, bool]]) -> list[str]:
    """Paths of binary changes whose new (or old) blob is too large for the patch."""
    found = [(e[0], e[5] if e[5].strip("0") else e[4])
             for e, c in zip(entries, counts, strict=True) if c[2]]
    if not found:
        return []
    sizes = git.run(ctx, "cat-file", "--batch-check=%(objectsize)",
                    input="".join(f"{sha}\n" for _, sha in found).encode()).stdout.split()
    return [path for (path, _), size in zip(found, sizes, strict=False)
            if size.isdigit() and int(size) > _BINARY_IN_PATCH]


def _parse_raw(raw: bytes) -> list[tuple[str, str, str, str, str, str]]:
    parts = raw.split(b"\0")
    entries = []
    i = 0
    while i < len(parts) - 1:
        meta = parts[i].decode()
        if not meta.startswith(":"):
            i += 1
            continue
        old_mode, new_mode, old_sha, new_sha, status = meta[1:].split(" ")
        path = parts[i + 1].decode("utf-8", "surrogateescape")
        entries.append((path, status[:1], old_mode, new_mode, old_sha, new_sha))
        i += 2
    return entries


def _numstat(ctx: git.Context, start_tree: str, cand_tree: str) -> list[tuple[int, int, bool]]:
    data = git.run(
        ctx, *BIG, "diff-tree", "-r", "-z", "--no-renames", "--numstat", start_tree, cand_tree
    ).stdout
    counts = []
    for item in data.split(b"\0"):
        fields = item.split(b"\t")
        if len(fields) == 3:
            binary = fields[0] == b"-"
            counts.append((0 if binary else int(fields[0]), 0 if binary else int(fields[1]),
                           binary))
    return counts


# ---------------------------------------------------------------------------
# Validation


def violation(rule: str, path: str | None, limit: Any, actual: Any) -> dict[str, Any]:
    return {"rule": rule, "path": path, "limit": limit, "actual": actual}


def violations(task: Task, stats: DiffStats) -> list[dict[str, Any]]:
    """Every rule the candidate breaks, per file first, then the budget totals."""
    found: list[dict[str, Any]] = []
    for f in stats.files:
        found.extend(_file_violations(task, f))
    if len(stats.files) > task.max_files_per_iteration:
        found.append(violation("max_files_per_iteration", None, task.max_files_per_iteration,
                               len(stats.files)))
    if stats.changed_lines > task.max_changed_lines:
        found.append(violation("max_changed_lines", None, task.max_changed_lines,
                               stats.changed_lines))
    return found


def _file_violations(task: Task, f: FileChange) -> list[dict[str, Any]]:
    found = []
    if not match_artifact(task, f.path):
        found.append(violation("not_an_artifact", f.path, list(task.include), f.path))
        return found
    if f.status == "D":
        found.append(violation("deleted_artifact", f.path, "artifacts may not be deleted",
                               "deleted"))
    if SYMLINK_MODE in (f.old_mode, f.new_mode):
        found.append(violation("symlink", f.path, "regular files only", "symbolic link"))
    elif GITLINK_MODE in (f.old_mode, f.new_mode):
        found.append(violation("submodule", f.path, "regular files only", "git repository"))
    elif f.binary:
        found.append(violation("binary_change", f.path, "text changes only", "binary"))
    if f.mode_changed:
        found.append(violation("mode_change", f.path, f.old_mode, f.new_mode))
    if task.allowed_file_types and f.status != "D":
        name = f.path.rsplit("/", 1)[-1]
        if not any(name.endswith(t) for t in task.allowed_file_types):
            suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
            found.append(violation("allowed_file_types", f.path, list(task.allowed_file_types),
                                   suffix))
    return found


def describe(found: list[dict[str, Any]]) -> str:
    """The first violation in words, with a count of the rest."""
    v = found[0]
    texts = {
        "not_an_artifact": "{path} changed but is not an artifact (artifacts.include)",
        "deleted_artifact": "{path} was deleted; deleting an artifact is not allowed",
        "symlink": "{path} is a symbolic link; only regular files can be artifacts",
        "submodule": "{path} is a nested repository; only regular files can be artifacts",
        "binary_change": "{path} has a binary change; only text changes are counted",
        "mode_change": "{path} changed mode {limit} -> {actual}; mode changes are not allowed",
        "allowed_file_types": "{path} has type {actual!r}, not in "
        "mutation.allowed_file_types {limit}",
        "max_files_per_iteration": "{actual} files changed, more than "
        "artifacts.max_files_per_iteration = {limit}",
        "max_changed_lines": "{actual} lines changed, more than mutation.max_changed_lines "
        "= {limit}",
    }
    text = texts[v["rule"]].format(**v)
    if len(found) > 1:
        more = len(found) - 1
        text += f" (and {more} more violation{'s' if more > 1 else ''})"
    return text


def unmatched_patterns(task: Task, ctx: git.Context, tree: str) -> list[str]:
    """The ``artifacts.include`` patterns that match no file of ``tree``."""
    prefixes = sorted({_literal_folder(p) for p in task.include})
    args = ["ls-tree", "-r", "-z", "--name-only", tree]
    if "" not in prefixes:
        args += ["--", *prefixes]
    names = git.split_z(git.run(ctx, *args).stdout)
    return [p for p in task.include
            if not any(match_artifact(replace(task, include=(p,)), n) for n in names)]


def _literal_folder(pattern: str) -> str:
    fixed = []
    for part in pattern.split("/")[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed)


def include_problem(task: Task, ctx: git.Context, tree: str,
                    found: list[dict[str, Any]]) -> tuple[str | None, bool]:
    """A change outside the artifacts while an ``artifacts.include`` entry matches no file
    is most likely a wrong path in the task, not the candidate's fault: the words that say
    so, and whether no entry matches anything (then it is a config crash, not a discard)."""
    if not any(v["rule"] == "not_an_artifact" for v in found):
        return None, False
    missing = unmatched_patterns(task, ctx, tree)
    if not missing:
        return None, False
    which = "matches" if len(missing) == 1 else "match"
    text = (f"artifacts.include {', '.join(map(repr, missing))} {which} no file in the "
            "repository: check the path in the task file (loopengine validate)")
    return text, len(missing) == len(task.include)
