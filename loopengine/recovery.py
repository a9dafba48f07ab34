"""Leftovers of runs that were killed (SIGKILL, power loss): found and cleaned by the next run.

Every run holds an exclusive ``flock`` on ``work/runs/<run_id>/alive.lock`` for its whole
life and keeps a marker in ``work/runs/.active/``.  A marker whose lock can be taken
belongs to a dead run: the steps it left running are killed (they carry its
``LOOPENGINE_RUN_ID``), a keep it had committed is finished from its journal
(``journal.py``: rolled forward after the commit point, and before it nothing reached
the user), its record is appended if it never was -- the journaled ``keep``, or a
``crash`` -- and its sandbox folder and its own worktree entry are removed (never
anything it did not make, never a global ``git worktree prune``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from loopengine import faults, git, journal
from loopengine.errors import LoopError
from loopengine.paths import write_problem
from loopengine.process import kill_tagged
from loopengine.results import (
    DEFAULT_RESULTS,
    Record,
    append_line,
    iso_utc,
    locked,
    printable,
    run_dir,
    save_record,
)

if TYPE_CHECKING:
    from loopengine.sandbox import Sandbox

ACTIVE = "work/runs/.active"
RUN_ID_VAR = "LOOPENGINE_RUN_ID"
# In the folder of a batch's one baseline measurement (campaign/batch.py): not a run.
BATCH_BASELINE = "batch-baseline.json"  # in every step's environment, detached children's too


class Alive:
    def __init__(self, root: Path, run_id: str) -> None:
        self.root = root
        self.run_id = run_id
        self.folder = run_dir(root, run_id)
        self.fd: int | None = None

    def claim(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.folder / "alive.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        marker = self.root / ACTIVE / self.run_id
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def _write(self, name: str, data: dict[str, object]) -> None:
        (self.folder / name).write_text(json.dumps(data) + "\n")

    def note_task(self, task_id: str, results_path: str, isolation: str | None = None) -> None:
        self._write("meta.json", {"task_id": task_id, "results_path": results_path,
                                  "isolation": isolation})

    def note_sandbox(self, sb: Sandbox) -> None:
        self._write("sandbox.json", {
            "base": str(sb.base),
            "admin_dir": str(sb.admin_dir) if sb.admin_dir else None,
            "kind": sb.kind,
        })

    def note_removed(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / "sandbox.json").unlink()

    def note_kept(self) -> None:
        """``--keep-sandbox``: the user owns the folder now; forget it."""
        self.note_removed()

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / ACTIVE / self.run_id).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / "alive.lock").unlink()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def clean_leftovers(root: Path, own_run_id: str) -> list[str]:
    """Clean up after every dead run; returns their run ids."""
    active = root / ACTIVE
    try:
        names = sorted(os.listdir(active))
    except FileNotFoundError:
        return []
    cleaned = []
    for name in names:
        if name == own_run_id:
            continue
        if not _valid_run_id(name):
            # Not a run of ours (a step can write here): never read, only forgotten.
            with contextlib.suppress(OSError):
                (active / name).unlink()
            continue
        if _is_dead(root, name):
            try:
                _clean(root, name, own_run_id)
            except (LoopError, OSError, ValueError, KeyError, TypeError) as exc:
                # One run's leftovers that cannot be cleaned must not wedge every later
                # run: say so once, and forget it.
                _give_up(root, name, own_run_id, exc)
            cleaned.append(name)
    return cleaned


_RUN_ID = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{6}")


def _valid_run_id(name: str) -> bool:
    return _RUN_ID.fullmatch(name) is not None


def _give_up(root: Path, run_id: str, own_run_id: str, exc: BaseException) -> None:
    record = _lost_record(run_id, {}, own_run_id)
    record = dataclasses.replace(record, reason=f"{record.reason}; its leftovers could not "
                                 f"be cleaned up ({type(exc).__name__}: {exc})")
    with contextlib.suppress(LoopError, OSError, ValueError):
        if not _has_line(root / DEFAULT_RESULTS, run_id):
            save_record(root, DEFAULT_RESULTS, record)
    with contextlib.suppress(OSError):
        (root / ACTIVE / run_id).unlink()


def _is_dead(root: Path, run_id: str) -> bool:
    lock = run_dir(root, run_id) / "alive.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _clean(root: Path, run_id: str, own_run_id: str) -> None:
    folder = run_dir(root, run_id)
    kill_tagged(run_id, var=RUN_ID_VAR)
    with locked(root, ".recover.lock"):
        if not (root / ACTIVE / run_id).exists():
            return  # another run cleaned it up while we waited for the lock
        repaired = _repair_git_state(root, run_id)
        _settle_record(root, run_id, own_run_id, repaired)
        _remove_sandbox(root, run_id)
        with contextlib.suppress(FileNotFoundError):
            (root / ACTIVE / run_id).unlink()
        with contextlib.suppress(FileNotFoundError):
            (folder / "alive.lock").unlink()


def _repair_git_state(root: Path, run_id: str) -> list[str]:
    """A step that killed the engine left its snapshot of the main repository's git state:
    put back what the step changed, as the engine would have after the step."""
    from loopengine import tripwire  # imports results and git only; kept off the start-up

    path = run_dir(root, run_id) / tripwire.SNAPSHOT
    if not path.exists():
        return []
    repo = git.repo_info(root)
    before = tripwire.load(path, repo) if repo.is_git else None
    changes: list[str] = []
    if before is not None:
        # The dead run's last sign of life: its step's logs, or the snapshot itself.
        folder = run_dir(root, run_id)
        last = max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()),
                   default=path.stat().st_mtime)
        wire = tripwire.Tripwire(repo, run_id)
        changes = wire.restore(before, until=last + 1)
        changes += [f"not undone: {what}" for what in wire.left]
    path.unlink(missing_ok=True)
    return changes


def _settle_record(root: Path, run_id: str, own_run_id: str,
                   repaired: list[str] | None = None) -> None:
    """Make sure the dead run's record is in its results file, exactly once."""
    folder = run_dir(root, run_id)
    if (folder / BATCH_BASELINE).exists():
        return  # a batch's baseline measurement is no run: it has no record to settle
    meta = trusted_meta(root, _read_json(folder / "meta.json") or {})
    results_path = str(meta.get("results_path") or DEFAULT_RESULTS)
    saved = _read_json(folder / "record.json")
    if saved is not None and saved.get("status") == "keep":
        # A keep recorded but not finished (its files could not be written): finish it.
        with contextlib.suppress(LoopError, OSError, ValueError, KeyError, TypeError):
            journal.finish(root, folder)
    if saved is not None:
        # Killed between record.json and the results line: append the line it lacks
        # (where save_record would have put it: the default file if the task's is unusable).
        if not any(_has_line(root / p, run_id) for p in (results_path, DEFAULT_RESULTS)):
            line = json.dumps(printable(saved), ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
            with locked(root):
                try:
                    append_line(root / results_path, line)
                except OSError:
                    append_line(root / DEFAULT_RESULTS, line)
        return
    try:
        record = journal.complete(root, folder, own_run_id)
    except (LoopError, OSError, ValueError, KeyError, TypeError) as exc:
        # A journal that cannot be finished must not make every later run crash too.
        record = _lost_record(run_id, meta, own_run_id)
        record = dataclasses.replace(record, reason=f"{record.reason}; its keep could not be "
                                     f"finished ({type(exc).__name__}: {exc}); look at "
                                     f"work/runs/{run_id}/journal.jsonl")
    if record is None:
        record = _lost_record(run_id, meta, own_run_id)
        if repaired:
            record = dataclasses.replace(
                record, reason=f"{record.reason}; a step had changed the main repository's "
                f"git state, which was put back: {'; '.join(repaired)}")
        ref = journal.saved_ref(root, record.task_id, run_id)
        if ref:
            record = dataclasses.replace(record, extra={**record.extra, "ref": ref})
    faults.point("recovery_before_record")
    save_record(root, results_path, record)


TASK_ID = re.compile(r"[A-Za-z0-9._-]+")


def trusted_meta(root: Path, meta: dict[str, object]) -> dict[str, object]:
    """A dead run's ``meta.json`` as recovery may use it.  It lies in ``work/``, which a
    step can write, so it is read as strictly as a task file: a ``task_id`` that is no task
    id is dropped, and a ``results_path`` where a task file could not point (``.git/``, a
    hook, an executable, a directory, outside the repository) falls back to the default."""
    task_id = meta.get("task_id")
    results_path = meta.get("results_path")
    safe: dict[str, object] = {}
    if isinstance(task_id, str) and TASK_ID.fullmatch(task_id) and task_id not in (".", ".."):
        safe["task_id"] = task_id
    if isinstance(results_path, str) and write_problem(root, results_path) is None \
            and results_path.split("/", 1)[0] not in (".git", ".venv") \
            and not _tracked(root, results_path):
        safe["results_path"] = results_path
    if meta.get("isolation") in ("bwrap", "none"):
        safe["isolation"] = meta["isolation"]
    return safe


def _tracked(root: Path, rel: str) -> bool:
    """Whether git tracks ``rel`` (a record appended to a tracked file is a change)."""
    proc = git.run(git.Context(root), "--literal-pathspecs", "ls-files", "-z", "--", rel,
                   check=False)
    return bool(proc.stdout.strip(b"\0"))


def _has_line(path: Path, run_id: str) -> bool:
    try:
        return f'"run_id":"{run_id}"'.encode() in path.read_bytes()
    except OSError:
        return False


def _remove_sandbox(root: Path, run_id: str) -> None:
    """The dead run's own sandbox folder and worktree entry, and nothing else.

    Found through ``sandbox.json`` and, for a run killed while it made its sandbox (before
    it could write that down), by name: a folder ``loopengine-<run_id>-*`` under the
    sandbox root, and a worktree entry that points into such a folder.
    """
    from loopengine import sandbox  # the sandbox module imports results; avoid a cycle

    folder = run_dir(root, run_id)
    prefix = f"{sandbox.PREFIX}{run_id}-"
    bases = set()
    info = _read_json(folder / "sandbox.json")
    if info and isinstance(info.get("base"), str):
        base = Path(str(info["base"]))
        # Only a folder of this run's name right under the sandbox root: sandbox.json is
        # a file a step can write.
        if base.name.startswith(prefix) and base.parent == sandbox.sandbox_root() \
                and ".." not in base.parts:
            bases.add(base)
    with contextlib.suppress(OSError):
        bases.update(p for p in sandbox.sandbox_root().iterdir() if p.name.startswith(prefix))
    common = _common_dir(root)
    with locked(root, ".worktree.lock"):
        for base in sorted(bases):
            admin = sandbox.admin_dir_into(common, base)
            sandbox._rmtree(base)
            if admin is not None:
                sandbox._rmtree(admin)
        if common is not None:  # an entry whose folder lies elsewhere, or is gone already
            with contextlib.suppress(OSError):
                for entry in (common / "worktrees").iterdir():
                    with contextlib.suppress(OSError):
                        target = Path((entry / "gitdir").read_text().strip())
                        if any(part.startswith(prefix) for part in target.parts):
                            sandbox._rmtree(entry)
    (folder / "sandbox.json").unlink(missing_ok=True)


def _common_dir(root: Path) -> Path | None:
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    try:
        link = dot_git.read_text().strip()
    except OSError:
        return None
    if not link.startswith("gitdir:"):
        return None
    git_dir = (root / link.removeprefix("gitdir:").strip()).resolve()
    try:
        common = (git_dir / "commondir").read_text().strip()
    except OSError:
        return git_dir
    return (git_dir / common).resolve()


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lost_record(run_id: str, meta: dict[str, object], own_run_id: str) -> Record:
    task_id = meta.get("task_id")
    return Record(
        task_id=str(task_id) if task_id else None,
        status="crash",
        reason=f"the run was killed before it finished; its leftovers were cleaned up by "
        f"run {own_run_id}",
        candidate_score=None,
        diff_summary="",
        run_id=run_id,
        baseline_score=None,
        metrics={},
        changed_files=[],
        changed_lines=0,
        patch=None,
        commit=None,
        sandbox="worktree",
        started_at=_started_at(run_id),
        duration_seconds=0.0,
        crash_kind="interrupted",
        violations=[],
        log_tail=None,
        # What its steps ran under, as the run noted it (untrusted: one of two words).
        extra={"isolation": meta.get("isolation") or "none"},
    )


def _started_at(run_id: str) -> str:
    import datetime as dt

    try:
        moment = dt.datetime.strptime(run_id.split("-")[0], "%Y%m%dT%H%M%S%fZ")
    except ValueError:
        return ""
    return iso_utc(moment.replace(tzinfo=dt.UTC))
