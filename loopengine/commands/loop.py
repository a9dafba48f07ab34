"""``loopengine loop``: iterations until a stop rule holds; one summary line on stdout.

On a terminal, stderr shows a live progress line (iteration, best score, keeps, time
left, the running step) and a rich summary table at the end; elsewhere a plain table,
and rich is never imported.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from loopengine.progress import Reporter, StderrReporter, _isatty

if TYPE_CHECKING:
    from loopengine.process import StepResult
    from loopengine.results import Record


def loop(task_path: str, root: Path, *, iterations: int | None, max_seconds: float | None,
         patience: int | None, target: float | None, max_crashes: int, candidates: int,
         jobs: int, resume: str | None, verbose: bool) -> int:
    from loopengine.campaign.loop import LoopOptions, Rules, run_loop

    stream = sys.stderr
    live = LoopLive(stream) if _isatty(stream) else None
    reporter_for: Callable[[], Reporter]
    if live is not None:
        reporter_for = live.reporter
    elif verbose:
        reporter_for = lambda: StderrReporter(stream, verbose=True)  # noqa: E731
    else:
        reporter_for = Reporter
    rules = Rules(iterations=iterations, max_seconds=max_seconds, patience=patience,
                  target=target, max_crashes=max_crashes, candidates=candidates, jobs=jobs)
    try:
        outcome = run_loop(LoopOptions(task_path=task_path, repo_root=root, rules=rules,
                                       resume=resume, reporter_for=reporter_for,
                                       on_progress=live.progress if live else None))
    finally:
        if live is not None:
            live.stop()
    click.echo(json.dumps(outcome.summary, separators=(",", ":"), allow_nan=False))
    summary_table(root, outcome.state, stream, rich=live is not None)
    return outcome.exit_code


# ---------------------------------------------------------------------------
# The live line


class LoopLive:
    """One rich live line for the whole loop; each iteration reports into it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, highlight=False)
        self.state: dict[str, Any] = {}
        self.step = ""
        self.since = time.monotonic()
        self.t0 = time.monotonic()
        self.live = Live(self, console=self.console, transient=True, refresh_per_second=4,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def progress(self, state: dict[str, Any]) -> None:
        self.state = dict(state, shown_at=time.monotonic())

    def reporter(self) -> Reporter:
        return _IterationReporter(self)

    def set_step(self, name: str) -> None:
        self.step, self.since = name, time.monotonic()

    def __rich__(self) -> Any:
        from rich.text import Text

        s = self.state
        text = Text(no_wrap=True, overflow="ellipsis")
        of = f"/{s['iterations']}" if s.get("iterations") else ""
        text.append(f"iteration {s.get('iteration', 1)}{of}", style="bold")
        best = s.get("best_score")
        text.append(f"  best {best:.6g}" if isinstance(best, float | int) else "  best -")
        text.append(f"  keeps {s.get('keeps', 0)}")
        left = s.get("time_left")
        if left is not None:
            left = max(0.0, left - (time.monotonic() - s.get("shown_at", time.monotonic())))
            text.append(f"  {_duration(left)} left")
        if self.step:
            text.append(f"  {self.step} {time.monotonic() - self.since:.1f}s", style="dim")
        return text

    def print(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.console.print(Text(text, style=style), soft_wrap=True)

    def stop(self) -> None:
        self.live.stop()


class _IterationReporter(Reporter):
    def __init__(self, live: LoopLive) -> None:
        self.live = live

    def phase(self, name: str) -> None:
        self.live.set_step(name)

    def step_started(self, name: str) -> None:
        self.live.set_step(name)

    def step_finished(self, name: str, result: StepResult) -> None:
        self.live.set_step("")

    def finished(self, record: Record) -> None:
        from loopengine.progress import STATUS_STYLES

        score = "-" if record.candidate_score is None else f"{record.candidate_score:.6g}"
        self.live.print(f"{record.status:<8}{score:>10}  {record.run_id}  {record.reason}",
                        STATUS_STYLES.get(record.status, ""))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# ---------------------------------------------------------------------------
# The summary table


def summary_table(root: Path, state: dict[str, Any], stream: TextIO, *, rich: bool) -> None:
    """The loop's runs, one a row, and a line of totals, on stderr."""
    rows = _rows(root, state)
    columns = ("run_id", "status", "score", "baseline", "reason")
    totals = (f"loop {state.get('loop_id')}: {state.get('iterations')} iterations, "
              f"{state.get('keeps')} keeps, {state.get('discards')} discards, "
              f"{state.get('crashes')} crashes; best {state.get('best_score')}; "
              f"stopped: {state.get('stop_reason')}")
    if rich:
        from rich.console import Console
        from rich.table import Table

        from loopengine.progress import STATUS_STYLES

        table = Table(title=totals, title_justify="left")
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row, style=STATUS_STYLES.get(row[1], ""))
        Console(file=stream, highlight=False).print(table)
        return
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns) - 1)]
    print(totals, file=stream)
    for row in [columns, *rows]:
        cells = [v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=stream)


def _rows(root: Path, state: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    from loopengine.results import run_dir

    rows = []
    for run_id in state.get("run_ids", []):
        try:
            rec = json.loads((run_dir(root, run_id) / "record.json").read_text())
        except (OSError, ValueError):
            rows.append((run_id, "?", "", "", "(no record)"))
            continue
        rows.append((run_id, str(rec.get("status")), _num(rec.get("candidate_score")),
                     _num(rec.get("baseline_score")),
                     " ".join(str(rec.get("reason", "")).split())[:120]))
    return rows


def _num(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.6g}"
