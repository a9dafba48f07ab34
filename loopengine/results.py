"""The record, ``results.jsonl``, ``work/runs/<run_id>/`` and the baseline store."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loopengine.errors import LoopError
from loopengine.paths import write_problem

WORK_DIR = "work"
DEFAULT_RESULTS = "work/results.jsonl"
LOCK_NAME = ".loopengine.lock"


def new_run_id(now: dt.datetime | None = None) -> str:
    """Unique, and sorts in start order: UTC time to the microsecond, then randomness."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def iso_utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Record:
    """One iteration's outcome, field for field the contract's section 4."""

    task_id: str | None
    status: str
    reason: str
    candidate_score: float | None
    diff_summary: str
    run_id: str
    baseline_score: float | None
    metrics: dict[str, Any]
    changed_files: list[str]
    changed_lines: int
    patch: str | None
    commit: str | None
    sandbox: str
    started_at: str
    duration_seconds: float
    crash_kind: str | None
    violations: list[dict[str, Any]]
    log_tail: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return printable(data)

    def to_json(self) -> str:
        return json.dumps(
            self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )


def printable(value: Any) -> Any:
    """``value`` with every string made writable as UTF-8, so that no input can make the
    record unwritable: a lone surrogate (``"\\ud800"`` in a scorer's JSON) becomes the
    text ``\\ud800``, a byte of a file name that is not UTF-8 (read with surrogateescape)
    becomes ``\\xff``; a float that JSON cannot hold (NaN, infinities) becomes null."""
    if isinstance(value, str):
        return _printable_text(value)
    if isinstance(value, dict):
        return {(_printable_text(k) if isinstance(k, str) else k): printable(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _printable_text(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------------------
# Locking and appending


@contextlib.contextmanager
def locked(root: Path, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold an exclusive lock on ``work/<name>`` for the block.

    ``os.open`` gives a non-inheritable descriptor (PEP 446), so no step inherits it.
    """
    work = root / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_line(path: Path, line: str) -> None:
    """Append one line in one ``write`` with ``O_APPEND``, then fsync.

    Call under :func:`locked`.  A torn last line left by a killed writer is ended first,
    so it never merges with this record.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = line.rstrip("\n").encode("utf-8", "backslashreplace") + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records in a results file and the number of damaged lines skipped."""
    records: list[dict[str, Any]] = []
    damaged = 0
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return records, 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            damaged += 1
            continue
        if isinstance(item, dict) and "status" in item and "run_id" in item:
            records.append(item)
        else:
            damaged += 1
    return records, damaged


# ---------------------------------------------------------------------------
# Run folders


class WorkspaceError(LoopError):
    """``work/`` cannot hold what a run writes: one line that says what to fix."""

    crash_kind = "config"


_FOLDERS = ("work", "work/runs", "work/runs/.active", "work/baselines")
_LOCKS = (LOCK_NAME, ".recover.lock", ".worktree.lock", ".tripwire.lock")


def workspace_problem(root: Path) -> str | None:
    """Why ``work/`` cannot be used (a file, a dangling link, not writable), or None."""
    for rel in _FOLDERS:
        path = root / rel
        if not os.path.lexists(path):
            continue
        if path.is_symlink() and not path.exists():
            return f"{rel} is a symbolic link to nothing ({os.readlink(path)}); remove it"
        if not path.is_dir():
            return f"{rel} is a file, not a folder; move it away"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{rel} is not writable; fix its permissions"
    for name in _LOCKS:
        path = root / WORK_DIR / name
        if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
            return f"{WORK_DIR}/{name} (a lock file) is not a regular file; remove it"
    return None


def require_workspace(root: Path) -> None:
    problem = workspace_problem(root)
    if problem is not None:
        raise WorkspaceError(f"cannot run: {problem}")


def run_dir(root: Path, run_id: str) -> Path:
    return root / WORK_DIR / "runs" / run_id


def save_record(root: Path, results_path: str, record: Record) -> str | None:
    """``record.json`` in the run folder and one line in the results file, under the lock.

    A results path that cannot be written (a folder, a file in the way) must not lose the
    record after a keep was committed, nor poison every later run's recovery: the line
    goes to the default results file instead, and the returned warning says so.
    """
    line = record.to_json()
    folder = run_dir(root, record.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "record.json",
                 (json.dumps(record.to_dict(), indent=2, ensure_ascii=False) + "\n").encode())
    with locked(root):
        # Checked again now, not only when the task was loaded: a step that runs without
        # isolation could have put a symlink to .git/hooks/pre-commit in its place since.
        problem = write_problem(root, results_path)
        default = Path(results_path) == Path(DEFAULT_RESULTS)
        if problem and default:
            raise LoopError(f"{DEFAULT_RESULTS} {problem}: the record was not appended "
                            f"(it is in {folder.relative_to(root)}/record.json)")
        try:
            if problem:
                raise OSError(0, problem)
            append_line(root / results_path, line)
        except OSError as exc:
            if default:
                raise
            append_line(root / DEFAULT_RESULTS, line)
            return (f"{results_path}: cannot append the record ({exc.strerror}); "
                    f"it went to {DEFAULT_RESULTS}")
    return None


# ---------------------------------------------------------------------------
# The baseline store: one small JSON file per task, written atomically.


class BaselineStoreError(LoopError):
    crash_kind = "internal"


@dataclass(frozen=True)
class Baseline:
    score: float
    artifacts: str  # digest of the artifact content the score was measured on
    run_id: str
    fingerprint: str | None = None
    scores: tuple[float, ...] = ()
    # The scorer's metrics of the last measurement the score came from (records show them
    # as ``baseline_metrics``, so that an agent sees which metric regressed).
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scores"] = list(self.scores)
        return data


def baseline_path(root: Path, task_id: str) -> Path:
    return root / WORK_DIR / "baselines" / f"{task_id}.json"


def load_baseline(root: Path, task_id: str) -> Baseline | None:
    path = baseline_path(root, task_id)
    try:
        data = json.loads(path.read_bytes())
        if data is None:
            return None
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        scores = data.get("scores", ())
        if not isinstance(scores, list | tuple):
            raise TypeError("scores is not a list")
        return Baseline(
            score=_finite(data["score"], "score"),
            artifacts=str(data["artifacts"]),
            run_id=str(data["run_id"]),
            fingerprint=data.get("fingerprint"),
            scores=tuple(_finite(s, "scores") for s in scores),
            metrics=_metrics(data.get("metrics", {})),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError) as exc:
        # A damaged store must never read as "no baseline": that would keep anything.
        why = exc.strerror if isinstance(exc, OSError) else exc
        raise BaselineStoreError(
            f"{path.relative_to(root)}: damaged baseline store ({why}); "
            "delete it to measure a new baseline"
        ) from exc


def _finite(value: Any, name: str) -> float:
    """A stored score: a finite number (json reads NaN and Infinity without a word)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} is {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} is {value}, not a finite number")
    return number


def _metrics(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"metrics is {type(value).__name__}, not an object")
    return value


def store_baseline(root: Path, task_id: str, baseline: Baseline) -> None:
    data = json.dumps(baseline.to_dict(), indent=2, allow_nan=False) + "\n"
    write_atomic(baseline_path(root, task_id), data.encode())
