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

from loopengine import measure as measure_mod
from loopengine.errors import LoopError, TaskError
from loopengine.executors import remote
from loopengine.executors.remote import Work, WorkResult
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


def make_work(task: Task, run_id: str, sb: Sandbox, candidate_tree: str,
              plan: measure_mod.Plan, *, has_change: bool, deadline: float) -> Work:
    """What travels to the worker: the task without local paths and the two trees' objects."""
    return Work(
        run_id=run_id,
        task=remote.portable_task(task),
        plan=plan,
        start_tree=sb.start_tree,
        candidate_tree=candidate_tree,
        objects=remote.ship(sb.ctx, sb.start_tree, candidate_tree),
        object_format=remote.object_format(sb.start_tree),
        has_change=has_change,
        seconds_left=deadline - time.monotonic(),
        handed_at=time.time(),
        marked_logs=task.policy.repeats > 1,
    )


def measure(task: Task, run_id: str, sb: Sandbox, candidate_tree: str, plan: measure_mod.Plan,
            *, has_change: bool, deadline: float, log_dir: Path,
            note: Callable[[str], None] = lambda text: None) -> WorkResult:
    """Measure a frozen candidate (and its baseline, as ``plan`` says) on the task's
    executor; the worker's step logs land in ``log_dir`` as a local run's do."""
    work = make_work(task, run_id, sb, candidate_tree, plan, has_change=has_change,
                     deadline=deadline)
    executor = for_task(task)
    try:
        result = wait(executor, executor.submit(work), deadline, task.max_seconds)
    finally:
        executor.shutdown()
    for lost in result.retried:
        note(f"{lost}; the measurements were retried once")
    remote.write_logs(result, log_dir)
    return result
