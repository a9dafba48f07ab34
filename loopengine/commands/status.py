"""``loopengine status``: where each task of the repository stands.

Everything is read from what runs left behind: the records (``work/results.jsonl``), the
baseline store (``work/baselines/<task_id>.json``), the task files under
``tasks/*/task.yaml`` and the loops' state (``work/loops/<loop_id>/state.json``).  No
step runs, and in the common case the tree is not walked: whether a stored baseline is
still *current* is decided the way the next ``run`` would decide it, cheaply --

- its artifact digest against the artifact files on disk (only those files are read);
- its evaluation fingerprint against one computed from HEAD's tree (one ``git ls-tree``,
  a tree object git already has) with the tracked files that differ from HEAD laid over
  it (``git diff-index``, which stats the tracked files but reads no folder, then
  ``git hash-object`` of just those files, nothing written).

Only when that reading differs are the untracked files listed (``git ls-files
--others``, git's scan of the folders), because the sandbox a run starts from holds them
too.  So a new untracked file made after the measurement, with no other change, is not
seen: the next run measures the baseline again although ``status`` said current.

rich is imported only when stdout is a terminal: piped, the output is plain text.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from loopengine.results import (
    DEFAULT_RESULTS,
    WORK_DIR,
    BaselineStoreError,
    load_baseline,
    read_records,
)

if TYPE_CHECKING:
    from loopengine import git
    from loopengine.task import Task

TASK_GLOB = "tasks/*/task.yaml"


def collect(root: Path, task_filter: str | None = None) -> dict[str, Any]:
    """The status of every task (or of ``task_filter``): what ``status --json`` prints."""
    tasks, file_errors = load_tasks(root)
    records, damaged = all_records(root, tasks.values())
    ids = set(tasks) | set(file_errors) | {r["task_id"] for r in records
                                           if isinstance(r.get("task_id"), str)}
    baselines = root / WORK_DIR / "baselines"
    if baselines.is_dir():
        ids.update(p.stem for p in baselines.glob("*.json"))
    if task_filter is not None:
        ids &= {task_filter}
    loops = read_loops(root)
    head = _Head(root)
    found = []
    for task_id in sorted(ids):
        mine = [r for r in records if r.get("task_id") == task_id]
        found.append(task_status(root, task_id, tasks.get(task_id), file_errors.get(task_id),
                                 mine, [lp for lp in loops if lp.get("task_id") == task_id],
                                 head))
    return {"repo": str(root), "damaged_lines": damaged, "tasks": found}


def load_tasks(root: Path) -> tuple[dict[str, Task], dict[str, str]]:
    """``task_id -> Task`` for the task files that load, and ``folder name -> error``."""
    from loopengine.errors import LoopError
    from loopengine.task import load_task

    found: dict[str, Task] = {}
    errors: dict[str, str] = {}
    for path in sorted(root.glob(TASK_GLOB)):
        rel = path.relative_to(root).as_posix()
        try:
            task = load_task(path, root)
        except LoopError as exc:
            errors[path.parent.name] = str(exc).replace(str(path), rel)
            continue
        found.setdefault(task.id, task)
    return found, errors


def all_records(root: Path, tasks: Iterable[Task] = ()) -> tuple[list[dict[str, Any]], int]:
    """The records of the default results file and of each task's own ``results_path``,
    once each, in start order."""
    paths = dict.fromkeys([DEFAULT_RESULTS, *(t.results_path for t in tasks)])
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    damaged = 0
    for rel in paths:
        found, bad = read_records(root / rel)
        damaged += bad
        for record in found:
            if str(record["run_id"]) not in seen:
                seen.add(str(record["run_id"]))
                records.append(record)
    if len(paths) > 1:
        records.sort(key=lambda r: str(r["run_id"]))
    return records, damaged


def task_status(root: Path, task_id: str, task: Task | None, task_error: str | None,
                records: list[dict[str, Any]], loops: list[dict[str, Any]],
                head: _Head) -> dict[str, Any]:
    counts = Counter(str(r.get("status")) for r in records)
    kinds = Counter(str(r.get("crash_kind") or "unknown") for r in records
                    if r.get("status") == "crash")
    keeps = [r for r in records if r.get("status") == "keep"]
    last = records[-1] if records else None
    scores = [s for s in (_num(r.get("candidate_score")) for r in keeps) if s is not None]
    minimize = task is not None and task.direction == "minimize"
    return {
        "task_id": task_id,
        "task_file": None if task is None else task.path.relative_to(root).as_posix(),
        "task_error": task_error,
        "direction": None if task is None else task.direction,
        "baseline": baseline_status(root, task_id, task, records, head),
        "last_keep": _keep(keeps[-1]) if keeps else None,
        "runs": len(records),
        "keeps": counts["keep"],
        "discards": counts["discard"],
        "crashes": counts["crash"],
        "crash_kinds": dict(sorted(kinds.items())),
        "best_kept_score": (min(scores) if minimize else max(scores)) if scores else None,
        "last_run": None if last is None else {
            "run_id": last.get("run_id"), "status": last.get("status"),
            "started_at": last.get("started_at"), "reason": last.get("reason")},
        "loop": _running(loops),
        "last_loop": _last_loop(loops),
    }


def _keep(record: dict[str, Any]) -> dict[str, Any]:
    score, base = _num(record.get("candidate_score")), _num(record.get("baseline_score"))
    delta = None if score is None or base is None else float(f"{score - base:.12g}")
    return {"run_id": record.get("run_id"), "commit": record.get("commit"),
            "ref": record.get("ref"), "score": score, "baseline_score": base, "delta": delta,
            "started_at": record.get("started_at"), "reason": record.get("reason")}


def _num(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


# ---------------------------------------------------------------------------
# The baseline and whether it is current


def baseline_status(root: Path, task_id: str, task: Task | None,
                    records: list[dict[str, Any]], head: _Head) -> dict[str, Any] | None:
    path = root / WORK_DIR / "baselines" / f"{task_id}.json"
    try:
        stored = load_baseline(root, task_id)
    except BaselineStoreError as exc:
        return {"score": None, "metrics": {}, "measurements": 0, "run_id": None,
                "measured_at": None, "current": False, "why": str(exc), "fingerprint": None}
    if stored is None:
        return None
    by_run = next((r for r in reversed(records) if r.get("run_id") == stored.run_id), None)
    metrics: Any = stored.metrics
    count = len(stored.scores)
    if by_run is not None:
        kept = by_run.get("status") == "keep" and by_run.get("changed_files")
        if not metrics:  # a store written before it kept metrics
            metrics = (by_run.get("metrics") if kept else by_run.get("baseline_metrics")) or {}
        if kept and not count:
            # A keep stores no measurements (they were selected for being high); its
            # score is the mean of the candidate's own.
            count = len(by_run.get("candidate_scores") or []) or 1
    current, why = is_current(root, task, stored.artifacts, stored.fingerprint, head)
    return {
        "score": stored.score,
        "metrics": metrics if isinstance(metrics, dict) else {},
        "measurements": count,
        "run_id": stored.run_id,
        "measured_at": _mtime(path),
        "current": current,
        "why": why,
        "fingerprint": stored.fingerprint,
    }


def is_current(root: Path, task: Task | None, artifacts: str, stored_fingerprint: str | None,
               head: _Head) -> tuple[bool | None, str]:
    """Would the next run compare with the stored baseline?  (``None``: cannot tell.)"""
    from loopengine import sync

    if task is None:
        return None, f"no task file ({TASK_GLOB}) names this task"
    if sync.digest(sync.artifact_state(root, task)) != artifacts:
        return False, ("the artifacts changed since it was measured; "
                       "the next run measures the baseline again")
    if stored_fingerprint is None:
        return False, ("it was stored without an evaluation fingerprint; "
                       "the next run measures it again")
    now = head.fingerprint(task)
    if now is None:
        return None, head.problem
    # The engine's start tree holds the untracked files too: only when the cheap reading
    # differs are they listed (git's own scan of the folders) to tell a change from them.
    if now != stored_fingerprint and head.fingerprint(task, untracked=True) != stored_fingerprint:
        return False, ("the evaluation changed since it was measured (runner, scorer, "
                       "objective, constraints or the files that evaluate); "
                       "the next run measures the baseline again")
    return True, "the next run compares with it"


class _Head:
    """HEAD's tree with the tracked files that differ from it, read once for all tasks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problem = ""
        self._read = False
        self.ctx: git.Context | None = None
        self._tree: str | None = None
        self._dirty: dict[str, bytes | None] = {}
        self._untracked: dict[str, bytes | None] | None = None

    def fingerprint(self, task: Task, untracked: bool = False) -> str | None:
        """The fingerprint the next run would compute, from HEAD and the tracked changes
        (and with ``untracked``, the untracked files that git does not ignore)."""
        from loopengine import fingerprint

        if not self._read:
            self._load()
        if self._tree is None or self.ctx is None:
            return None
        dirty = self._dirty
        if untracked:
            if self._untracked is None:
                self._untracked = self._list_untracked()
            dirty = {**dirty, **self._untracked}
        entries = fingerprint.files(task, self.ctx, self._tree)
        if dirty:
            entries = self._overlay(task, entries, dirty)
        return fingerprint.digest(task, entries)

    def _list_untracked(self) -> dict[str, bytes | None]:
        from loopengine import git

        assert self.ctx is not None
        # The same paths the sandbox lays over HEAD: never work/ or a virtualenv.
        out = git.run(self.ctx, "ls-files", "-z", "--others", "--exclude-standard", "--",
                      ".", *(f":(exclude,top){name}" for name in sorted(_RUNTIME))).stdout
        return self._entries(git.split_z(out))

    def _load(self) -> None:
        from loopengine import git

        self._read = True
        info = git.repo_info(self.root)
        if not info.is_git:
            self.problem = "not a git repository: telling would read every file"
            return
        if info.head is None:
            self.problem = "no commit yet: telling would read every file"
            return
        self.ctx = info.ctx
        self._tree = info.head_tree or git.out(info.ctx, "rev-parse", "HEAD^{tree}")
        out = git.run(info.ctx, "diff-index", "-z", "--name-only", "--no-renames",
                      "--ignore-submodules=all", "HEAD", "--").stdout
        paths = [p for p in git.split_z(out) if p.split("/", 1)[0] not in _RUNTIME]
        self._dirty = self._entries(paths)

    def _entries(self, paths: list[str]) -> dict[str, bytes | None]:
        """``path -> ls-tree entry`` of each file as it is on disk; None when deleted."""
        from loopengine import git

        assert self.ctx is not None
        found: dict[str, bytes | None] = {}
        files: list[tuple[str, str]] = []
        for rel in paths:
            full = self.root / rel
            if full.is_symlink():
                sha = git.out(self.ctx, "hash-object", "--stdin",
                              input=os.fsencode(os.readlink(full)))
                found[rel] = _entry("120000", sha, rel)
            elif full.is_file():
                files.append((rel, "100755" if os.access(full, os.X_OK) else "100644"))
            else:
                found[rel] = None
        if files:
            data = "\n".join(rel for rel, _ in files).encode("utf-8", "surrogateescape") + b"\n"
            shas = git.out(self.ctx, "hash-object", "--stdin-paths", input=data).split("\n")
            for (rel, mode), sha in zip(files, shas, strict=True):
                found[rel] = _entry(mode, sha, rel)
        return found

    def _overlay(self, task: Task, entries: list[bytes],
                 dirty: dict[str, bytes | None]) -> list[bytes]:
        from loopengine import fingerprint

        out: dict[str, bytes] = {}
        for entry in entries:
            out[entry.partition(b"\t")[2].decode("utf-8", "surrogateescape")] = entry
        others = None
        for rel, found in dirty.items():
            if found is None:
                out.pop(rel, None)
            elif rel in out:
                out[rel] = found
            else:
                if others is None and not task.policy.fingerprint:
                    assert self.ctx is not None and self._tree is not None
                    others = fingerprint.others(task, self.ctx, self._tree)
                if fingerprint.covers(task, rel, others):
                    out[rel] = found
        return [out[rel] for rel in sorted(out, key=lambda p: p.encode("utf-8",
                                                                        "surrogateescape"))]


_RUNTIME = {WORK_DIR, ".venv", ".pytest_cache"}


def _entry(mode: str, sha: str, rel: str) -> bytes:
    return f"{mode} blob {sha}\t".encode() + rel.encode("utf-8", "surrogateescape")


def _mtime(path: Path) -> str | None:
    try:
        moment = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    except OSError:
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------
# Loops


def read_loops(root: Path) -> list[dict[str, Any]]:
    """Every ``work/loops/<loop_id>/state.json`` that reads, with ``loop_id`` filled in."""
    folder = root / WORK_DIR / "loops"
    loops = []
    for state in sorted(folder.glob("*/state.json")) if folder.is_dir() else []:
        try:
            data = json.loads(state.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            data.setdefault("loop_id", state.parent.name)
            data["_folder"] = state.parent
            loops.append(data)
    return loops


def _running(loops: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest loop whose process is alive on this machine, if any."""
    for state in sorted(loops, key=lambda s: str(s.get("loop_id")), reverse=True):
        if loop_alive(state):
            keys = ("loop_id", "pid", "started_at", "iterations", "keeps", "discards",
                    "crashes", "start_score", "best_score", "elapsed_seconds")
            found = {k: state.get(k) for k in keys}
            found["stop_requested"] = (state["_folder"] / "STOP").exists()
            return found
    return None


def _last_loop(loops: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest loop, running or not, and whether ``loop --resume`` can continue it."""
    if not loops:
        return None
    state = max(loops, key=lambda s: str(s.get("loop_id")))
    alive = loop_alive(state)
    if alive:
        ended = "running"
    elif state.get("status", "running") == "running":
        ended = "killed"  # it says running, and its process is gone
    else:
        ended = str(state.get("status"))
    return {"loop_id": state.get("loop_id"), "status": ended,
            "stop_reason": state.get("stop_reason"), "iterations": state.get("iterations"),
            "keeps": state.get("keeps"), "best_score": state.get("best_score"),
            "resumable": not alive and ended != "finished"}


def loop_alive(state: dict[str, Any]) -> bool:
    # The loop writes "running" when it starts or resumes; anything else has ended.
    if state.get("stop_reason") or state.get("status", "running") != "running":
        return False
    from loopengine.process import owner_alive

    return owner_alive(state.get("pid"), state.get("host") or state.get("hostname"))


# ---------------------------------------------------------------------------
# Printing


def status(root: Path, task: str | None, as_json: bool) -> None:
    data = collect(root, task)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, default=str))
        return
    if task is not None and not data["tasks"]:
        from loopengine.commands import CommandError

        raise CommandError(f"no task {task!r} in {root} (no task file, record or baseline)")
    if not data["tasks"]:
        click.echo(f"no tasks in {root}: no {TASK_GLOB}, no records, no baselines")
        return
    if data["damaged_lines"]:
        click.echo(f"skipped {data['damaged_lines']} damaged line(s) in {DEFAULT_RESULTS}",
                   err=True)
    blocks = [_lines(t) for t in data["tasks"]]
    if _isatty():
        _print_rich(data["tasks"], blocks)
    else:
        click.echo("\n\n".join("\n".join(_plain(block)) for block in blocks))


def _lines(t: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    b = t["baseline"]
    if b is None:
        rows.append(("baseline", "none yet (the next run measures it)"))
    else:
        n = b["measurements"]
        rows.append(("baseline", f"{_fmt(b['score'])}  ({n} measurement{'s' * (n != 1)}, "
                                 f"measured {b['measured_at'] or '?'}, run {b['run_id']})"))
        verdict = {True: "current", False: "stale", None: "unknown"}[b["current"]]
        rows.append(("current", f"{verdict}: {b['why']}"))
        if b["metrics"]:
            rows.append(("metrics", ", ".join(f"{k}={_fmt(v)}" for k, v in b["metrics"].items())))
    k = t["last_keep"]
    if k is None:
        rows.append(("last keep", "none"))
    else:
        commit = (k["commit"] or "no commit")[:12]
        delta = "-" if k["delta"] is None else f"{k['delta']:+.6g}"
        rows.append(("last keep", f"{commit}  score {_fmt(k['score'])}  delta {delta}  "
                                  f"(run {k['run_id']})"))
    crashes = str(t["crashes"])
    if t["crash_kinds"]:
        crashes += " (" + ", ".join(f"{kind} {n}" for kind, n in t["crash_kinds"].items()) + ")"
    rows.append(("runs", f"{t['runs']}: keeps {t['keeps']}, discards {t['discards']}, "
                         f"crashes {crashes}"))
    if t["best_kept_score"] is not None:
        rows.append(("best kept", _fmt(t["best_kept_score"])))
    loop = t["loop"]
    if loop is not None:
        rows.append(("loop", f"running: {loop['loop_id']} (pid {loop['pid']}, "
                             f"{loop.get('iterations') or 0} iterations)"
                     + ("; STOP requested" if loop.get("stop_requested") else "")))
    else:
        last = t["last_loop"]
        text = "none running"
        if last is not None:
            why = f" ({last['stop_reason']})" if last.get("stop_reason") else ""
            text += f"; the last, {last['loop_id']}, {last['status']}{why}"
            if last["resumable"]:
                text += f": `loopengine loop --resume {last['loop_id']}` continues it"
        rows.append(("loop", text))
    if t["task_error"]:
        rows.append(("task file", f"error: {t['task_error']}"))
    title = t["task_id"] + (f"  ({t['task_file']})" if t["task_file"] else "")
    return [("", title), *rows]


def _plain(block: list[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in block)
    title, rows = block[0][1], block[1:]
    return [title, *(f"  {label.ljust(width)}  {_one_line(text)}" for label, text in rows)]


def _one_line(text: str) -> str:
    """A reason or an error with a newline in it must not break the block."""
    return " ".join(text.split()) if any(c in text for c in "\t\n\r\f\v") else text


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _print_rich(tasks: list[dict[str, Any]], blocks: list[list[tuple[str, str]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    styles = {"current": "green", "stale": "yellow", "unknown": "dim"}
    for t, block in zip(tasks, blocks, strict=True):
        table = Table(title=block[0][1], title_justify="left", title_style="bold",
                      show_header=False, box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(overflow="fold")
        for label, text in block[1:]:
            style = styles.get(text.split(":", 1)[0], "") if label == "current" else ""
            if label == "last keep" and t["last_keep"] is not None:
                style = "green"
            table.add_row(label, text, style=style)
        console.print(table)
        console.print()
