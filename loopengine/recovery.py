"""Leftovers of runs that were killed (SIGKILL, power loss): found and cleaned by the next run.

Every run holds an exclusive ``flock`` on ``work/runs/<run_id>/alive.lock`` for its whole
life and keeps a marker in ``work/runs/.active/``.  A marker whose lock can be taken
belongs to a dead run: the steps it left running are killed, its sandbox folder and its
own worktree entry are removed (never anything it did not make, never a global
``git worktree prune``) and, if it never wrote its record, a ``crash`` record is appended
for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from loopengine.results import Record, iso_utc, locked, run_dir, save_record

if TYPE_CHECKING:
    from loopengine.sandbox import Sandbox

ACTIVE = "work/runs/.active"


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

    def note_task(self, task_id: str, results_path: str) -> None:
        self._write("meta.json", {"task_id": task_id, "results_path": results_path})

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
        if _is_dead(root, name):
            _clean(root, name, own_run_id)
            cleaned.append(name)
    return cleaned


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
    from loopengine import sandbox  # the sandbox module imports results; avoid a cycle

    folder = run_dir(root, run_id)
    _kill_orphans(run_id)
    info = _read_json(folder / "sandbox.json")
    base = Path(str(info.get("base", ""))) if info else None
    # Only a folder this run made: named after it, with our prefix.
    if base is not None and base.name.startswith(f"{sandbox.PREFIX}{run_id}-"):
        admin = info.get("admin_dir") if info else None
        admin_dir = Path(str(admin)) if admin else None
        if admin_dir is not None and not _admin_points_into(admin_dir, base):
            admin_dir = None
        with locked(root, ".worktree.lock"):
            sandbox._rmtree(base)
            if admin_dir is not None:
                sandbox._rmtree(admin_dir)
        (folder / "sandbox.json").unlink(missing_ok=True)
    if not (folder / "record.json").exists():
        _append_lost_record(root, run_id, own_run_id)
    with contextlib.suppress(FileNotFoundError):
        (root / ACTIVE / run_id).unlink()
    with contextlib.suppress(FileNotFoundError):
        (folder / "alive.lock").unlink()


def _kill_orphans(run_id: str) -> None:
    """SIGKILL the steps a killed run left running (they live in their own sessions).

    Every step's environment holds ``LOOPENGINE_RUN_ID``, detached children included;
    the step tokens died with the engine, the run id did not.
    """
    needle = f"\0LOOPENGINE_RUN_ID={run_id}\0".encode()
    for _ in range(20):  # children may fork while being killed; rescan, bounded
        found = False
        with contextlib.suppress(OSError):
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == os.getpid():
                    continue
                try:
                    with open(f"/proc/{entry}/environ", "rb") as fh:
                        environ = b"\0" + fh.read()
                except OSError:  # gone, or not ours
                    continue
                if needle in environ:
                    found = True
                    with contextlib.suppress(OSError):
                        os.kill(int(entry), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.005)  # a killed process shows its environment until torn down


def _admin_points_into(admin_dir: Path, base: Path) -> bool:
    try:
        target = (admin_dir / "gitdir").read_text().strip()
    except OSError:
        return False
    return target.startswith(str(base) + os.sep)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _append_lost_record(root: Path, run_id: str, own_run_id: str) -> None:
    meta = _read_json(run_dir(root, run_id) / "meta.json") or {}
    task_id = meta.get("task_id")
    results_path = meta.get("results_path") or "work/results.jsonl"
    started = _started_at(run_id)
    record = Record(
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
        started_at=started,
        duration_seconds=0.0,
        crash_kind="interrupted",
        violations=[],
        log_tail=None,
    )
    with locked(root, ".recover.lock"):
        if not (run_dir(root, run_id) / "record.json").exists():
            save_record(root, str(results_path), record)


def _started_at(run_id: str) -> str:
    import datetime as dt

    try:
        moment = dt.datetime.strptime(run_id.split("-")[0], "%Y%m%dT%H%M%S%fZ")
    except ValueError:
        return ""
    return iso_utc(moment.replace(tzinfo=dt.UTC))
