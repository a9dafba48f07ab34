"""Fault injection for the crash-safety tests: SIGKILL the engine at a named point.

``LOOPENGINE_TEST_FAULT=<point>`` in the engine's environment makes :func:`point` kill
the engine with SIGKILL when it gets there, exactly as a power cut or ``kill -9`` would:
no ``finally``, no cleanup, no record.  The next run must recover.  Without the variable
:func:`point` does nothing.
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_VAR = "LOOPENGINE_TEST_FAULT"

# In the order an iteration passes them.
POINTS = (
    "after_sandbox",
    "after_mutator",
    "after_validation",
    # The keep transaction: between each two of its writes.
    "after_temp",  # a kept file written beside its target
    "after_index_lock",  # the user's index.lock taken
    "after_new_index",  # the new index built beside it
    "before_ref_update",  # the journal names the commit; the branch has not moved
    "after_ref_update",  # the commit point
    "after_file",  # a kept file renamed over its target
    "after_index",  # the new index renamed over the index
    "after_sync",
    "after_baseline",
    "before_record",
    # Recovery of a killed run, itself killed (the run after it must finish the job).
    "recovery_after_files",
    "recovery_before_record",
)


def point(name: str) -> None:
    """Die here, now, if the test asked for it."""
    assert name in POINTS, name
    if os.environ.get(FAULT_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)


ERROR_VAR = "LOOPENGINE_TEST_ERROR"
ERRORS = ("keep_write",)


def error(name: str) -> None:
    """Fail here with ENOSPC (a full disk), if the test asked for it."""
    assert name in ERRORS, name
    if os.environ.get(ERROR_VAR) == name:
        raise OSError(errno.ENOSPC, "No space left on device (LOOPENGINE_TEST_ERROR)")


SIGNAL_VAR = "LOOPENGINE_TEST_STARTUP_SIGNAL"


def startup_signal() -> None:
    """Send ourselves SIGINT or SIGTERM while still importing, if the test asked for it."""
    name = os.environ.get(SIGNAL_VAR)
    if name in ("INT", "TERM"):
        os.kill(os.getpid(), signal.SIGINT if name == "INT" else signal.SIGTERM)
