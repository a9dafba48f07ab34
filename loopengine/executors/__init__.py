"""Where the runner and scorer measurements run: here, or on a Ray cluster.

An executor is shaped like ``concurrent.futures``: ``submit(work)`` returns a ``Future``
of a :class:`~loopengine.executors.remote.WorkResult`.  Both executors run the same
function, :func:`loopengine.executors.remote.measure`: the local one in a thread pool,
the Ray one as a Ray task on whichever node has the task's resources free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from loopengine import process
from loopengine.errors import LoopError, TaskError
from loopengine.executors import remote
from loopengine.executors.remote import Work, WorkResult
from loopengine.iteration.common import EvalRequest
from loopengine.sandbox import Sandbox
from loopengine.task import Task

INSTALL_HINT = ("install it with `uv add 'loopengine[ray]'` (or `pip install "
                "'loopengine[ray]'`) on this machine and on every node of the cluster")


class ExecutorError(LoopError):
    """The executor lost the work or could not be reached: a ``crash`` of kind executor."""

    crash_kind = "executor"


class LateError(LoopError):
    """The budget ran out while the work waited on the cluster: a ``crash`` of kind budget."""

    crash_kind = "budget"


# How often the caller looks at a future (a signal is honoured within this time).
POLL_SECONDS = 0.05
# What the transport may add to the budget before the caller gives up on the work; the
# worker itself keeps every step within the budget.
LATE_SECONDS = 15.0


class Executor(Protocol):
    kind: str  # "local" | "ray", as records name it

    def submit(self, work: Work) -> Future[WorkResult]: ...

    def cancel(self, future: Future[WorkResult]) -> None: ...

    def shutdown(self) -> None: ...


def check_available(task: Task) -> None:
    """A task asking for Ray where Ray is not installed is a config error, said early."""
    if task.executor.kind != "ray":
        return
    try:
        import loopengine.executors.ray  # noqa: F401  (sets Ray's options, then imports it)
    except ImportError as exc:
        raise TaskError(f"{task.display_path}: executor.kind: ray needs the Ray package, "
                        f"which is not installed here ({exc}); {INSTALL_HINT}") from exc


def for_task(task: Task, jobs: int = 1) -> Executor:
    """The executor the task asks for (``executor.kind``), ready to take work."""
    check_available(task)
    if task.executor.kind == "ray":
        from loopengine.executors.ray import RayExecutor

        return RayExecutor(task.executor)
    from loopengine.executors.local import LocalExecutor

    return LocalExecutor(jobs)


def wait(executor: Executor, future: Future[WorkResult], deadline: float,
         max_seconds: float) -> WorkResult:
    """The result of ``future``; on a signal, an error or the budget, the work is cancelled
    (its steps killed where they run) before the exception goes on."""
    try:
        while True:
            process.check_cancelled()  # a batch's worker thread: the signal came to main
            try:
                return future.result(timeout=POLL_SECONDS)
            except TimeoutError:
                if time.monotonic() > deadline + LATE_SECONDS:
                    raise LateError(
                        f"budget.max_seconds ({max_seconds:g}s) ran out before the "
                        f"{executor.kind} executor returned the measurements (waiting for a "
                        "node with the task's resources free, or a lost connection)") from None
    except BaseException:
        executor.cancel(future)
        raise


def evaluate(req: EvalRequest, sb: Sandbox, *, deadline: float, log_dir: Path,
             env: dict[str, str] | None = None,
             note: Callable[[str], None] = lambda text: None) -> WorkResult:
    """Evaluate a frozen candidate on the task's executor; the worker's step logs land in
    ``log_dir`` as a local run's do."""
    task = req.task
    work = remote.make_work(req, sb.ctx, env)
    executor = for_task(task)
    try:
        result = wait(executor, executor.submit(work), deadline, task.max_seconds)
    finally:
        executor.shutdown()
    for lost in result.retried:
        note(f"{lost}; the measurements were retried once")
    remote.write_logs(result, log_dir)
    return result
