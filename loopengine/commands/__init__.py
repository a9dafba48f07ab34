"""One module per command; ``cli.py`` registers each with one call into it."""

from __future__ import annotations

from loopengine.errors import LoopError


class CommandError(LoopError):
    """A command that cannot do what was asked (unknown run id, folder exists, ...).

    ``cli.py`` prints the message and exits 1, like any other ``LoopError``.
    """

    crash_kind = "config"
