"""What a person watching an iteration sees on stderr; stdout stays the one JSON line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from loopengine.process import StepResult
    from loopengine.results import Record


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


class StderrReporter(Reporter):
    """Each step as it runs, with its elapsed time; with ``verbose``, the steps' output."""

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
        state = "timed out" if result.timed_out else f"exit {result.exit_code}"
        self._say(f"{name} finished in {result.duration:.2f}s ({state})")
        if self.verbose:
            try:
                text = result.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines()[-200:]:
                print(f"  {name}| {line}", file=self.stream)

    def info(self, message: str) -> None:
        self._say(message)

    def finished(self, record: Record) -> None:
        self._say(f"{record.status}: {record.reason}")
