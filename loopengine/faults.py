"""Fault injection for the crash-safety tests: SIGKILL the engine at a named point.

``LOOPENGINE_TEST_FAULT=<point>`` in the engine's environment makes :func:`point` kill
the engine with SIGKILL when it gets there, exactly as a power cut or ``kill -9`` would:
no ``finally``, no cleanup, no record.  The next run must recover.  Without the variable
:func:`point` does nothing.
"""

from __future__ import annotations

import os
import signal

FAULT_VAR = "LOOPENGINE_TEST_FAULT"

# In the order an iteration passes them.
POINTS = (
    "after_sandbox",
    "after_mutator",
    "after_validation",
    "before_ref_update",
    "after_ref_update",
    "after_sync",
    "before_record",
)


def point(name: str) -> None:
    """Die here, now, if the test asked for it."""
    assert name in POINTS, name
    if os.environ.get(FAULT_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)


SIGNAL_VAR = "LOOPENGINE_TEST_STARTUP_SIGNAL"


def startup_signal() -> None:
    """Send ourselves SIGINT or SIGTERM while still importing, if the test asked for it."""
    name = os.environ.get(SIGNAL_VAR)
    if name in ("INT", "TERM"):
        os.kill(os.getpid(), signal.SIGINT if name == "INT" else signal.SIGTERM)
