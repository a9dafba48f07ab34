"""The engine's exceptions.

Expected failures of a step (a mutator that exits 1, a scorer that prints garbage) are
values (a ``crash`` record), not exceptions.  Exceptions are for the environment or the
input being wrong; ``cli.py`` catches ``LoopError`` once.
"""

from __future__ import annotations


class LoopError(Exception):
    """Base class: a problem the engine reports as a crash with ``crash_kind``."""

    crash_kind = "internal"


class TaskError(LoopError):
    """A task file that cannot be read or does not validate.

    The message names the file and the dotted field:
    ``tasks/x/task.yaml: runner.timeout_secs: unknown key (did you mean timeout_seconds?)``
    """

    crash_kind = "config"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.problems = [message]

    @classmethod
    def many(cls, problems: list[str]) -> TaskError:
        """One error for several problems: the message is the first, ``problems`` all."""
        error = cls(problems[0])
        error.problems = list(problems)
        return error


class SandboxError(LoopError):
    """The sandbox could not be made, reset or removed."""

    crash_kind = "sandbox"


class GitError(LoopError):
    """A git command the engine needs failed; the message shows command and output."""

    crash_kind = "internal"


class Interrupted(BaseException):  # named like KeyboardInterrupt, which it mirrors
    """SIGINT or SIGTERM arrived; carries the signal number.

    A ``BaseException`` so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
