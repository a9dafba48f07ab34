"""A tripwire on the main repository: what a step changed in its git state, put back.

Steps run in a sandbox whose ``.git`` is a private repository, so nothing they do through
git there reaches the user's.  A step can still name the main repository by its absolute
path (``git -C /home/me/project tag x``, or a plain write into ``.git/hooks``).  Around
each step the engine takes a :class:`Snapshot` of what would outlive the run there -- the
refs and HEAD, the config, hooks, ``info/``, ``objects/info/alternates`` and the stash's
reflog: small files and one ``for-each-ref`` -- and afterwards :meth:`Tripwire.restore`
puts every difference back and names it; the step is then a ``crash``.

Several runs may watch one repository at once, and their steps' windows overlap: a run
must never "put back" what another run just repaired (that would plant a removed hook
again).  Every repair is written to ``work/tripwire.jsonl``; a difference that is exactly
another run's repair is left alone, and a repair made while this run's step ran makes
this step a crash too (it may have been this step's doing).

One change is the user's to make while a step runs (contract section 7): a commit on the
checked-out branch.  The current branch (or a detached HEAD) moving *forward* is left
alone unless its reflog shows that a step made the move: steps run with
``GIT_REFLOG_ACTION`` set to :func:`marker`, which ``git commit``, ``merge``, ``reset``
and their kin write into the reflog.  A step that clears the variable and commits onto
the current branch is indistinguishable from the user; the README's safety model says so.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopengine import git
from loopengine.errors import GitError
from loopengine.results import WORK_DIR, locked

# Files larger than this are compared by digest and cannot be put back.
MAX_FILE = 1 << 20
# A hooks folder or info/ with more entries than this is not a hooks folder: stop there.
MAX_ENTRIES = 2000
_FORMAT = "%(refname)%00%(objectname)%00%(symref)"
REPAIRS = "tripwire.jsonl"  # under work/
_REPAIRS_TAIL = 256 << 10
# refs/loopengine/<task_id>/<run_id>: a candidate ref (campaign/refs.py writes them).
_CANDIDATE_REF = re.compile(r"^refs/loopengine/[A-Za-z0-9._-]+/(\d{8}T\d{12}Z-[0-9a-f]{6})$")


def marker(run_id: str) -> str:
    """What every step's ``GIT_REFLOG_ACTION`` holds, and so its reflog entries."""
    return f"loopengine step {run_id}"


def email(run_id: str) -> str:
    """The committer email of a step's git: every reflog entry names it."""
    return f"loopengine-step-{run_id}@loopengine.invalid"


def step_env(run_id: str) -> dict[str, str]:
    """What marks a step's own ref updates in the main repository, so that the tripwire
    can prove a change was the step's: the reflog message (``GIT_REFLOG_ACTION``: commit,
    merge, reset, tag...), the committer in every reflog entry (``branch``, ``update-ref``
    and ``stash`` write no action), and a reflog for every ref (tags and other refs have
    none by default)."""
    return {
        "GIT_REFLOG_ACTION": marker(run_id),
        "GIT_COMMITTER_EMAIL": email(run_id),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.logAllRefUpdates",
        "GIT_CONFIG_VALUE_0": "always",
    }


@dataclass(frozen=True)
class Entry:
    kind: str  # "file", "dir", "link", "big" (a file too large to keep), "other"
    mode: int
    data: bytes  # a file's bytes, a link's target, a big file's digest


@dataclass(frozen=True)
class Snapshot:
    refs: dict[str, tuple[str, str]]  # refname -> (object name, symref target or "")
    loose: frozenset[str]  # refnames with a file under refs/ (a broken one shows only here)
    files: dict[str, Entry]  # absolute path -> what was there
    reflogs: dict[str, int]  # reflog path -> its size, to read what a step appended
    packed: bytes | None  # packed-refs, put back only if a step left it unreadable
    time: float  # wall clock when it was taken, to find other runs' repairs since


SNAPSHOT = "tripwire.json"  # in the run folder while a step runs


def save(snapshot: Snapshot, path: Path) -> None:
    """Write the snapshot to disk before the step starts: a step that kills the engine
    (``kill -9 $PPID``) leaves it for the next run's recovery to compare and put back."""
    data = {
        "refs": {k: list(v) for k, v in snapshot.refs.items()},
        "loose": sorted(snapshot.loose),
        "files": {k: [e.kind, e.mode, base64.b64encode(e.data).decode()]
                  for k, e in snapshot.files.items()},
        "reflogs": snapshot.reflogs,
        "packed": base64.b64encode(snapshot.packed).decode() if snapshot.packed is not None
        else None,
        "time": snapshot.time,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path, repo: git.RepoInfo) -> Snapshot | None:
    """A saved snapshot, read as untrusted input (a step can write the run folder): only
    paths of the repository's own git state, only well-formed entries; None if damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        allowed = [str(p) for p in Tripwire(repo, "recovery").paths]
        files = {}
        for key, (kind, mode, blob) in data["files"].items():
            if not any(key == a or key.startswith(a + os.sep) for a in allowed):
                continue
            if kind not in ("file", "dir", "link", "big", "other") or not isinstance(mode, int):
                raise ValueError(kind)
            files[str(key)] = Entry(kind, mode, base64.b64decode(blob))
        refs = {str(k): (str(v[0]), str(v[1])) for k, v in data["refs"].items()
                if str(k).startswith("refs/")}
        packed = data["packed"]
        return Snapshot(refs, frozenset(str(x) for x in data["loose"]), files,
                        {str(k): int(v) for k, v in data["reflogs"].items()},
                        base64.b64decode(packed) if packed is not None else None,
                        float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class Tripwire:
    """Watches one repository's shared git state; ``take`` before a step, ``restore`` after."""

    def __init__(self, repo: git.RepoInfo, run_id: str) -> None:
        assert repo.git_dir is not None and repo.common_dir is not None
        self.repo = repo
        self.run_id = run_id
        self.repaired: list[list[Any]] = []  # [kind, name, from, to] of this restore
        self.explained: set[tuple[str, str, str, str]] = set()  # other runs' repairs
        self.marker = marker(run_id).encode()
        self.email = f"<{email(run_id)}>".encode()
        self.left: list[str] = []  # changes seen that were not the step's: left alone
        self.left_refs: set[str] = set()
        self.rescued_entries: list[str] = []
        self.until: float | None = None
        common, own = repo.common_dir, repo.git_dir
        self.head_file = own / "HEAD"
        self.paths = [
            self.head_file,
            common / "config",
            common / "config.worktree",
            common / "hooks",
            common / "info",
            common / "objects" / "info" / "alternates",
            common / "logs" / "refs" / "stash",  # `git stash list` reads this reflog
        ]
        if own != common:
            self.paths.append(own / "config.worktree")
        hooks = _hooks_path(repo)
        if hooks is not None and hooks not in self.paths:
            self.paths.append(hooks)
        self.quiet = {str(common / "logs" / "refs" / "stash")}  # named as refs/stash

    # -- looking -----------------------------------------------------------------

    def take(self) -> Snapshot:
        assert self.repo.common_dir is not None
        started = time.time()
        files: dict[str, Entry] = {}
        for path in self.paths:
            _walk(path, files)
        reflogs = [self.repo.git_dir / "logs" / "HEAD"]  # type: ignore[operator]
        for folder, _dirs, names in os.walk(self.repo.common_dir / "logs" / "refs"):
            reflogs += [Path(folder) / n for n in names]
        try:
            packed = (self.repo.common_dir / "packed-refs").read_bytes()
        except OSError:
            packed = None
        # Reflog sizes before the refs: a ref that moves in between then shows its new
        # reflog entry, and is judged by it (never taken for a move without one).
        sizes = {str(p): _size(p) for p in reflogs}
        return Snapshot(self._refs(), self._loose(), files, sizes, packed, started)

    def _refs(self) -> dict[str, tuple[str, str]]:
        proc = git.run(self.repo.ctx, "for-each-ref", f"--format={_FORMAT}", check=False)
        if proc.returncode != 0:
            raise GitError(f"git for-each-ref failed: {proc.stderr.decode('utf-8', 'replace')}")
        refs = {}
        for line in proc.stdout.decode("utf-8", "surrogateescape").splitlines():
            name, _, rest = line.partition("\0")
            value, _, symref = rest.partition("\0")
            refs[name] = (value, symref)
        return refs

    def _loose(self) -> frozenset[str]:
        assert self.repo.common_dir is not None
        top = self.repo.common_dir / "refs"
        found = set()
        for folder, _dirs, names in os.walk(top):
            for name in names:
                # A ".lock" is git's own, held while a ref is updated (by the user, or by
                # another run's keep): never a ref, and never ours to remove.
                if not name.endswith(".lock"):
                    found.add(os.path.relpath(os.path.join(folder, name), self.repo.common_dir))
        return frozenset(p.replace(os.sep, "/") for p in found)

    # -- putting back ------------------------------------------------------------

    def restore(self, before: Snapshot, until: float | None = None) -> list[str]:
        """Put back whatever differs from ``before``; says what it was, [] when nothing.

        ``until`` (recovery of a dead run, maybe long after its step): only what provably
        was the step's is undone -- refs with its marks, and files last changed before
        ``until`` (the dead run's last sign of life); what came later is the user's."""
        self.until = until
        with locked(self.repo.root, ".tripwire.lock"):  # runs repair one at a time
            others = self._others_repairs(before.time)
            self.explained = {(kind, name, _key(old), _key(new))
                              for _run, kind, name, old, new, _what in others}
            self.repaired, self.left, self.left_refs, self.rescued_entries = [], [], set(), []
            changes = self._restore(before)
            changes += [f"a stash entry kept reachable as {r}" for r in self.rescued_entries]
            self._log_repairs(changes)
        return changes + [f"{what} (put back by run {run}, while this step ran)"
                          for run, _kind, _name, _old, _new, what in others]

    def _restore(self, before: Snapshot) -> list[str]:
        changes = []
        try:
            after = self.take()
        except GitError:
            # A step left packed-refs unreadable: put it back and look again.  (Only then:
            # `git pack-refs` rewrites it with the same refs, which is no change.)
            assert self.repo.common_dir is not None
            packed = self.repo.common_dir / "packed-refs"
            if before.packed is None:
                _remove(packed)
            else:
                _write(packed, before.packed, 0o644)
            changes.append(f"{self._name(str(packed))} damaged")
            after = self.take()
        own = self._users_own_move(before, after)
        changes += self._restore_refs(before, after, own)
        changes += self._restore_files(before, after, skip_head="HEAD" in own)
        return changes

    def _users_own_move(self, before: Snapshot, after: Snapshot) -> set[str]:
        """``{ref}`` or ``{"HEAD"}`` when the checked-out commit moved forward and no step
        marker is in the reflog: the user's own commit, which is theirs to keep."""
        key = str(self.head_file)
        head, head_after = before.files.get(key), after.files.get(key)
        if head is None or head.kind != "file":
            return set()
        text = head.data.decode("utf-8", "surrogateescape").strip()
        if text.startswith("ref: "):
            name = text[5:]
            old, new = before.refs.get(name), after.refs.get(name)
            reflog = str(self.repo.common_dir / "logs" / name)  # type: ignore[operator]
            # An unborn branch getting its first commit moves forward too.
            if (head_after == head and new and old != new and not new[1]
                    and (old is None or (not old[1] and self._forward(old[0], new[0])))
                    and not self._marked(reflog, before)):
                return {name}
            return set()
        if head_after is None or head_after.kind != "file" or head_after == head:
            return set()
        new_sha = head_after.data.decode("utf-8", "surrogateescape").strip()
        reflog = str(self.repo.git_dir / "logs" / "HEAD")  # type: ignore[operator]
        if self._forward(text, new_sha) and not self._marked(reflog, before):
            return {"HEAD"}
        return set()

    def _forward(self, old: str, new: str) -> bool:
        proc = git.run(self.repo.ctx, "merge-base", "--is-ancestor", old, new, check=False)
        return proc.returncode == 0

    def _marked(self, reflog: str, before: Snapshot) -> bool:
        """Whether a step wrote what was appended to ``reflog`` since ``before``."""
        try:
            with open(reflog, "rb") as fh:
                start = before.reflogs.get(reflog, 0)
                if os.fstat(fh.fileno()).st_size >= start:
                    fh.seek(start)
                data = fh.read()
        except OSError:
            return False
        return self.marker in data or self.email in data

    def _whose(self, name: str, before: Snapshot) -> str:
        """``step`` when the ref's reflog since ``before`` carries this step's marks,
        ``other`` when it has entries but none of them does (the user's commit in another
        worktree, a fetch, another run), ``unknown`` when it has none."""
        assert self.repo.common_dir is not None
        path = self.repo.common_dir / "logs" / name
        try:
            with open(path, "rb") as fh:
                start = before.reflogs.get(str(path), 0)
                if os.fstat(fh.fileno()).st_size >= start:
                    fh.seek(start)
                data = fh.read()
        except OSError:
            return "unknown"
        if not data.strip():
            return "unknown"
        return "step" if self.marker in data or self.email in data else "other"

    def _elsewhere(self, name: str, before: Snapshot) -> bool:
        """Refs that others move as a matter of course: remote-tracking refs and the tags
        a fetch brought (it names them in FETCH_HEAD), a branch checked out in another
        worktree (a commit made there)."""
        if name.startswith("refs/remotes/") or name in self._other_worktree_branches():
            return True
        if name.startswith("refs/tags/"):
            assert self.repo.common_dir is not None
            tag = name.removeprefix("refs/tags/").encode("utf-8", "surrogateescape")
            heads = [self.repo.common_dir / "FETCH_HEAD"]
            with contextlib.suppress(OSError):
                heads += [e / "FETCH_HEAD" for e in (self.repo.common_dir / "worktrees").iterdir()]
            for fetched in heads:
                with contextlib.suppress(OSError):
                    if fetched.stat().st_mtime >= before.time - 1 and \
                            b"\ttag '" + tag + b"' of " in fetched.read_bytes():
                        return True
        return False

    def _other_worktree_branches(self) -> set[str]:
        assert self.repo.common_dir is not None
        found = set()
        with contextlib.suppress(OSError):
            for entry in (self.repo.common_dir / "worktrees").iterdir():
                if entry.resolve() == Path(self.repo.git_dir or "").resolve():
                    continue
                with contextlib.suppress(OSError):
                    head = (entry / "HEAD").read_text().strip()
                    if head.startswith("ref: "):
                        found.add(head[5:])
        if self.repo.git_dir != self.repo.common_dir:  # this is a linked worktree
            with contextlib.suppress(OSError):
                head = (self.repo.common_dir / "HEAD").read_text().strip()
                if head.startswith("ref: "):
                    found.add(head[5:])
        return found

    def _lost(self, sha: str) -> bool:
        """Whether ``sha``, no longer in a ref, takes anything away that matters: an object
        no ref reaches but a commit this step made (its committer is the step's mark) and
        that brings nothing else with it."""
        # Not --all: a broken ref a step planted would make rev-list fail.
        tips = {value for value, symref in self._refs().values() if not symref}
        tips.update(self._detached_heads())
        stdin = (sha + "\n" + "".join(f"^{t}\n" for t in sorted(tips))).encode()
        lost = git.run(self.repo.ctx, "rev-list", "--objects", "--no-object-names", "--stdin",
                       input=stdin, check=False)
        if lost.returncode != 0:
            return True  # cannot tell: keep it reachable
        objects = set(lost.stdout.decode().split())
        if not objects:
            return False
        commits = git.run(self.repo.ctx, "rev-list", "--format=%H %ce", "--no-commit-header",
                          "--stdin", input=stdin, check=False)
        made = {}
        for line in commits.stdout.decode("utf-8", "replace").splitlines():
            commit, _, committer = line.partition(" ")
            made[commit] = committer
        if objects - set(made):
            return True  # a tree, a blob or a tag: content
        return any(f"<{c}>".encode() != self.email for c in made.values())

    def _detached_heads(self) -> set[str]:
        """The commits worktrees have checked out on a detached HEAD (they keep them)."""
        assert self.repo.common_dir is not None
        heads = [self.repo.common_dir / "HEAD"]
        with contextlib.suppress(OSError):
            heads += [e / "HEAD" for e in (self.repo.common_dir / "worktrees").iterdir()]
        found = set()
        for head in heads:
            with contextlib.suppress(OSError):
                text = head.read_text().strip()
                if text and not text.startswith("ref:"):
                    found.add(text)
        return found

    def _rescue(self, name: str, sha: str, suffix: str = "") -> str | None:
        """Keep ``sha`` reachable under ``refs/loopengine/rescued/<run_id>/...``; its name."""
        if not sha or not sha.strip("0") or not self._lost(sha):
            return None
        short = name.removeprefix("refs/")
        rescued = f"refs/loopengine/rescued/{self.run_id}/{short}{suffix}"
        if self._git("update-ref", "--no-deref", "-m", "loopengine: rescued", rescued, sha):
            return rescued
        return None

    def _restore_refs(self, before: Snapshot, after: Snapshot, own: set[str]) -> list[str]:
        changes = []
        for name in sorted(set(before.refs) | set(after.refs)):
            old, new = before.refs.get(name), after.refs.get(name)
            if old == new or name in own or self._explained("ref", name, old, new):
                continue
            if self._other_runs_candidate(name) or name.startswith("refs/loopengine/rescued/"):
                continue
            whose = self._whose(name, before)
            if whose == "other" or (whose == "unknown" and (
                    self.until is not None or self._elsewhere(name, before))):
                # Never undo what the engine cannot prove the step did: say it, leave it.
                self.left.append(f"{_describe(name, old, new)} (not this step's doing, as "
                                 "far as its reflog shows: left as it is)")
                self.left_refs.add(name)
                continue
            self.repaired.append(["ref", name, new, old])
            if old is None:
                assert new is not None
                what = f"{name} created at {new[0][:12]}"  # enough to get it back
                ok = self._git("update-ref", "--no-deref", "-d", name, new[0])
            elif new is None and name in after.loose:
                what = f"{name} damaged"
                ok = self._write_loose(name, old)
            elif new is None:
                what = f"{name} deleted"
                ok = self._set_ref(name, old, "0" * len(old[0]))
            else:
                what = _describe(name, old, new)
                ok = self._set_ref(name, old, new[0])
            if ok and new is not None and not new[1]:
                # What the ref held is never made unreachable by the repair.
                rescued = self._rescue(name, new[0])
                if rescued:
                    what += f" (kept reachable as {rescued})"
            changes.append(what if ok else f"{what} (could not be put back)")
        # A file under refs/ that is no ref at all (git skips it as broken): remove it.
        # One made between for-each-ref and the walk is a real ref, deleted as any new one.
        for name in sorted(after.loose - before.loose - set(after.refs)):
            assert self.repo.common_dir is not None
            proc = git.run(self.repo.ctx, "rev-parse", "-q", "--verify", name, check=False)
            value = proc.stdout.decode().strip()
            if proc.returncode == 0 and value:
                ok = self._git("update-ref", "--no-deref", "-d", name, value)
                what = f"{name} created at {value[:12]}"
                changes.append(what if ok else f"{what} (could not be put back)")
                continue
            with contextlib.suppress(OSError):
                (self.repo.common_dir / name).unlink()
            changes.append(f"{name} created (a broken ref)")
        return changes

    def _other_runs_candidate(self, name: str) -> bool:
        """Another run saves (and ``gc`` prunes) candidate refs while this step runs;
        a ref under ``refs/loopengine/`` naming this very run is a step's doing."""
        found = _CANDIDATE_REF.match(name)
        return found is not None and found.group(1) != self.run_id

    def _set_ref(self, name: str, old: tuple[str, str], current: str) -> bool:
        if old[1]:
            return self._git("symbolic-ref", name, old[1])
        return self._git("update-ref", "--no-deref", "-m", "loopengine: put back", name,
                         old[0], current)

    def _write_loose(self, name: str, old: tuple[str, str]) -> bool:
        assert self.repo.common_dir is not None
        text = f"ref: {old[1]}\n" if old[1] else f"{old[0]}\n"
        try:
            _write(self.repo.common_dir / name, text.encode(), 0o644)
        except OSError:
            return False
        return True

    def _git(self, *args: str) -> bool:
        return git.run(self.repo.ctx, *args, check=False).returncode == 0

    def _restore_files(self, before: Snapshot, after: Snapshot, *, skip_head: bool) -> list[str]:
        stash_log = str(self.repo.common_dir / "logs" / "refs" / "stash")  # type: ignore[operator]
        if "refs/stash" in self.left_refs:
            skip = {stash_log}  # the stash is not the step's: nor is its list
        else:
            skip = set()
            self._rescue_stash_entries(before.files.get(stash_log), after.files.get(stash_log))
        if self.until is not None:
            skip |= {p for p in after.files if _mtime(p) > self.until}
        changed = sorted(p for p in set(before.files) | set(after.files)
                         if before.files.get(p) != after.files.get(p)
                         and p not in skip
                         and not (skip_head and p == str(self.head_file))
                         and not self._explained("file", p, _digest(before.files.get(p)),
                                                 _digest(after.files.get(p))))
        self.repaired += [["file", p, _digest(after.files.get(p)), _digest(before.files.get(p))]
                          for p in changed]
        # Remove what is new or of another kind, deepest first; then put back, top first.
        for path in reversed(changed):
            old, new = before.files.get(path), after.files.get(path)
            if new is not None and (old is None or old.kind != new.kind):
                _remove(Path(path))
        changes = []
        for path in changed:
            old, new = before.files.get(path), after.files.get(path)
            ok = old is None or self._put(Path(path), old)
            if path not in self.quiet and not (new and old and new.kind == old.kind == "dir"
                                               and new.mode == old.mode):
                what = "created" if old is None else "deleted" if new is None else "changed"
                text = f"{self._name(path)} {what}"
                changes.append(text if ok else f"{text} (could not be put back)")
        return changes

    def _rescue_stash_entries(self, old: Entry | None, new: Entry | None) -> None:
        """Stash entries that putting the stash's reflog back drops: kept reachable."""
        if new is None or new.kind != "file":
            return
        kept = set(old.data.splitlines()) if old is not None and old.kind == "file" else set()
        dropped = [line for line in new.data.splitlines() if line not in kept]
        for i, line in enumerate(dropped, 1):
            fields = line.split(b" ")
            if len(fields) > 1:
                rescued = self._rescue("refs/stash", fields[1].decode("ascii", "replace"),
                                       f"-{i}")
                if rescued:
                    self.rescued_entries.append(rescued)

    def _put(self, path: Path, entry: Entry) -> bool:
        try:
            if entry.kind == "dir":
                path.mkdir(exist_ok=True)
                os.chmod(path, stat.S_IMODE(entry.mode))
            elif entry.kind == "file":
                _write(path, entry.data, stat.S_IMODE(entry.mode))
            elif entry.kind == "link":
                _remove(path)
                os.symlink(entry.data, path)
            else:
                return False
        except OSError:
            return False
        return True

    def _name(self, path: str) -> str:
        """``.git/hooks/pre-commit`` for a path in the repository, else the absolute path."""
        with contextlib.suppress(ValueError):
            return Path(path).relative_to(self.repo.root).as_posix()
        return path


    def _explained(self, kind: str, name: str, old: Any, new: Any) -> bool:
        """Whether going from ``old`` to ``new`` is exactly another run's repair."""
        return (kind, name, _key(old), _key(new)) in self.explained

    def _others_repairs(self, since: float) -> list[tuple[str, str, str, Any, Any, str]]:
        """Other runs' repairs logged since ``since``: (run, kind, name, from, to, what)."""
        path = self.repo.root / WORK_DIR / REPAIRS
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - _REPAIRS_TAIL))
                raw = fh.read()
        except OSError:
            return []
        found = []
        for line in raw.splitlines():
            try:
                item = json.loads(line)
                if item["run"] == self.run_id or item["time"] < since - 1:
                    continue
                for kind, name, old, new in item["repaired"]:
                    found.append((item["run"], kind, name, old, new,
                                  name if kind == "ref" else self._name(name)))
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line
        return found

    def _log_repairs(self, changes: list[str]) -> None:
        if not self.repaired:
            return
        line = json.dumps({"run": self.run_id, "time": time.time(), "repaired": self.repaired,
                           "changes": changes}, ensure_ascii=False)
        path = self.repo.root / WORK_DIR / REPAIRS
        with open(path, "ab") as fh:
            fh.write(line.encode("utf-8", "surrogateescape") + b"\n")


def _describe(name: str, old: tuple[str, str] | None, new: tuple[str, str] | None) -> str:
    if old is None:
        assert new is not None
        return f"{name} created at {new[0][:12]}"
    if new is None:
        return f"{name} deleted (it was at {old[0][:12]})"
    if old[1] != new[1]:
        return f"{name} changed from {old[1] or old[0][:12]} to {new[1] or new[0][:12]}"
    return f"{name} moved from {old[0][:12]} to {new[0][:12]}"


def _key(value: Any) -> str:
    return json.dumps(value)


def _digest(entry: Entry | None) -> str | None:
    if entry is None:
        return None
    h = hashlib.sha256(f"{entry.kind}\0{entry.mode}\0".encode())
    h.update(entry.data)
    return h.hexdigest()


def _hooks_path(repo: git.RepoInfo) -> Path | None:
    """The folder the user's ``core.hooksPath`` names, if any (our own ``-c`` aside)."""
    proc = git.run(repo.ctx, "config", "--show-origin", "-z", "--get-all", "core.hooksPath",
                   check=False)
    items = proc.stdout.split(b"\0")
    value = None
    for origin, item in zip(items[::2], items[1::2], strict=False):
        if not origin.startswith(b"command line:"):
            value = item.decode("utf-8", "surrogateescape")
    if not value:
        return None
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else repo.root / path


def _walk(path: Path, out: dict[str, Entry]) -> None:
    if len(out) >= MAX_ENTRIES:
        return
    try:
        st = os.lstat(path)
    except OSError:
        return
    key = str(path)
    if stat.S_ISLNK(st.st_mode):
        out[key] = Entry("link", st.st_mode, os.fsencode(os.readlink(path)))
    elif stat.S_ISDIR(st.st_mode):
        out[key] = Entry("dir", st.st_mode, b"")
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(path)):
                if not name.endswith(".lock"):  # git's own, held by a running git
                    _walk(path / name, out)
    elif stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE:
        try:
            out[key] = Entry("file", st.st_mode, path.read_bytes())
        except OSError:
            out[key] = Entry("other", st.st_mode, b"")
    elif stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out[key] = Entry("big", st.st_mode, digest.digest())
    else:
        out[key] = Entry("other", st.st_mode, b"")


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically (a hook being put back is never seen half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.loopengine-restore")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
