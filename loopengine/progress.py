"""What a person watching an iteration sees on stderr; stdout stays the one JSON line.

The engine calls a :class:`Reporter`.  An agent calling ``loopengine run`` in a loop (no
terminal, no ``-v``) gets the silent base class, and rich is never imported: it costs
tens of milliseconds per call.  On a terminal, :class:`LiveReporter` keeps one live line
(the running step, its elapsed time, its latest output line) and leaves one line per
finished step.  With ``-v`` and no terminal (CI logs), :class:`StderrReporter` writes
plain, timestamped lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from loopengine.process import StepResult
    from loopengine.results import Record

STATUS_STYLES = {"keep": "bold green", "discard": "bold yellow", "crash": "bold red"}


class Reporter:
    """Silent: what an agent calling ``loopengine run`` in a loop gets."""

    def phase(self, name: str) -> None:
        pass

    def step_started(self, name: str) -> None:
        pass

    def step_finished(self, name: str, result: StepResult) -> None:
        pass

    def line_callback(self, name: str) -> Callable[[str], None] | None:
        return None

    def info(self, message: str) -> None:
        pass

    def finished(self, record: Record) -> None:
        pass

    def close(self) -> None:
        """Release the terminal; safe to call more than once, and after ``finished``."""


def make_reporter(verbose: bool, stream: TextIO | None = None) -> Reporter:
    """Live on a terminal, plain lines with ``-v`` elsewhere, silent otherwise."""
    stream = stream or sys.stderr
    if _isatty(stream):
        return LiveReporter(stream, verbose=verbose)
    if verbose:
        return StderrReporter(stream, verbose=True)
    return Reporter()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False


def outcome_words(result: StepResult) -> str:
    if result.timed_out:
        return "timed out"
    if result.exit_code is None:
        return "killed"
    if result.exit_code < 0:
        return f"killed by signal {-result.exit_code}"
    return f"exit {result.exit_code}"


class StderrReporter(Reporter):
    """Plain lines, each with the time since the start: for logs and pipes (``-v``)."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.t0 = time.monotonic()

    def _say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{elapsed:7.2f}s] {text}", file=self.stream, flush=True)

    def phase(self, name: str) -> None:
        self._say(name)

    def step_started(self, name: str) -> None:
        self._say(f"{name} started")

    def step_finished(self, name: str, result: StepResult) -> None:
        self._say(f"{name} finished in {result.duration:.2f}s ({outcome_words(result)})")

    def line_callback(self, name: str) -> Callable[[str], None] | None:
        if not self.verbose:
            return None

        def show(line: str) -> None:
            print(f"  {name}| {line}", file=self.stream, flush=True)

        return show

    def info(self, message: str) -> None:
        self._say(message)

    def finished(self, record: Record) -> None:
        self._say(f"{record.status}: {record.reason}")


class _LiveLine:
    """The live line: a spinner, what is running, for how long, and its latest output."""

    def __init__(self) -> None:
        from rich.spinner import Spinner

        self.spinner = Spinner("dots")
        self.what = "starting"
        self.since = time.monotonic()
        self.latest = ""

    def set(self, what: str) -> None:
        self.what, self.since, self.latest = what, time.monotonic(), ""

    def __rich__(self) -> Any:
        from rich.text import Text

        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(self.what or "working", style="bold")
        text.append(f" {time.monotonic() - self.since:6.1f}s")
        if self.latest:
            text.append(f"  {self.latest}", style="dim")
        self.spinner.update(text=text)
        return self.spinner


class LiveReporter(Reporter):
    """rich on a terminal: a live status line, and one line per finished step."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.verbose = verbose
        self.t0 = time.monotonic()
        self.line = _LiveLine()
        self.live = Live(self.line, console=self.console, transient=True,
                         refresh_per_second=8, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def _print(self, *parts: tuple[str, str]) -> None:
        from rich.text import Text

        self.console.print(Text.assemble(*parts), soft_wrap=True)

    def phase(self, name: str) -> None:
        self.line.set(name)

    def step_started(self, name: str) -> None:
        self.line.set(name)

    def step_finished(self, name: str, result: StepResult) -> None:
        mark, style = ("✓", "green") if result.ok else ("✗", "red")
        words = "" if result.ok else f"  {outcome_words(result)}"
        self.line.set("")
        self._print((f"{mark} ", style), (f"{name:<8}", "bold"),
                    (f" {result.duration:6.2f}s", ""), (words, style))

    def line_callback(self, name: str) -> Callable[[str], None] | None:
        def show(line: str) -> None:
            self.line.latest = line.expandtabs().strip()
            if self.verbose:
                self._print((f"  {name}| ", "dim"), (line, ""))

        return show

    def info(self, message: str) -> None:
        self._print((message, "dim"))

    def finished(self, record: Record) -> None:
        self.close()
        total = time.monotonic() - self.t0
        self._print((record.status, STATUS_STYLES.get(record.status, "bold")),
                    (f"  {record.reason}", ""), (f"  ({total:.2f}s)", "dim"))

    def close(self) -> None:
        self.live.stop()  # idempotent in rich
