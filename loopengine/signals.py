"""SIGINT and SIGTERM: stop the running step at once, but never half-way through cleanup."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

from loopengine.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)

_early: int | None = None


def catch_early() -> None:
    """Note a SIGINT or SIGTERM that arrives before the engine's guard is installed.

    ``loopengine run`` calls this first thing, so a signal sent while Python is still
    importing gives the same record and exit status (130 / 143) as one sent later.
    """

    def note(signum: int, frame: FrameType | None) -> None:
        global _early
        if _early is None:
            _early = signum

    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED:
            signal.signal(sig, note)


class SignalGuard:
    """Turns the first signal into ``Interrupted`` unless inside :meth:`deferred`.

    Inside a deferred block (the keep's sync, cleanup, writing the record) a signal is
    only noted; the block finishes and the caller exits with 128 + the signal number.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._depth = 0
        self._raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, old in self._old.items():
            # After a signal the caller prints the record and exits 128 + n; a second ^C
            # restored to the default handler would kill it first (exit -2, no record).
            signal.signal(sig, signal.SIG_IGN if self.received is not None else old)

    def raise_pending(self) -> None:
        """Raise ``Interrupted`` now for a signal noted before the guard was installed."""
        if self.received is None and _early is not None:
            self.received = _early
        if self.received is not None and not self._raised and self._depth == 0:
            self._raised = True
            raise Interrupted(self.received)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self._depth == 0 and not self._raised:
            self._raised = True
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    @staticmethod
    def name(signum: int) -> str:
        try:
            return signal.Signals(signum).name
        except ValueError:
            return f"signal {signum}"
