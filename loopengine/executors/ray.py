"""The Ray executor: one candidate's measurements as one Ray task with the task's resources.

One Ray task measures both sides of a comparison (the baseline when it is measured, and
the candidate), so both always run on the same node: a noisy neighbour hits them alike.

Faults: a task lost with its node or worker, or cancelled by someone else, is retried
once, on another node when Ray names the one it lost; lost twice, or a cluster that cannot
be reached, is an :class:`~loopengine.executors.ExecutorError` whose message says what
happened.  The user's machine is never touched by a worker: the decision and the keep
happen in the caller, after the result is back.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

# Ray's default under `uv run` uploads the caller's working directory (the user's whole
# repository) to every worker and starts workers with `uv run` there: exactly what a
# worker must not need.  Read by Ray when it is imported.
os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"

import ray

from loopengine import task as task_mod
from loopengine.executors import ExecutorError, remote
from loopengine.executors.remote import Work, WorkResult

# A cluster address that does not answer within this many seconds is unreachable (Ray's
# own connect would retry for minutes).
CONNECT_TIMEOUT = 10.0
# A cancelled task gets this long to stop its steps before its worker is killed.
CANCEL_GRACE = 5.0
# Joining from a batch's worker thread, Ray warns that it cannot set its SIGTERM handler:
# the engine's own handler is the one that must stay (see connect), so say nothing.
logging.getLogger("ray._private.worker").addFilter(
    lambda record: "SIGTERM handler is not set" not in record.getMessage())
_NODE_ID = re.compile(r"node[ _]id[:= ]+([0-9a-f]{56})", re.IGNORECASE)
_connect_lock = threading.Lock()


def measure_on_node(work: Work) -> WorkResult:
    """What the Ray task runs: the local measurement function, on the node Ray chose."""
    return remote.measure(work, node=ray.get_runtime_context().get_node_id())


@dataclass
class _Job:
    work: Work
    future: Future[WorkResult] = field(default_factory=Future)
    ref: Any = None  # the ObjectRef of the attempt under way
    stopping: bool = False


class RayExecutor:
    kind = "ray"

    def __init__(self, config: task_mod.Executor) -> None:
        self.address = connect(config.address)
        self._remote = ray.remote(measure_on_node)
        self._options: dict[str, Any] = {
            "num_cpus": config.num_cpus, "num_gpus": config.num_gpus,
            # Retries are ours (once, elsewhere, and said in the log), not Ray's.
            "max_retries": 0, "retry_exceptions": False,
        }
        self._jobs: dict[int, _Job] = {}

    def submit(self, work: Work) -> Future[WorkResult]:
        job = _Job(work)
        job.future.set_running_or_notify_cancel()
        self._jobs[id(job.future)] = job
        threading.Thread(target=self._follow, args=(job,), name="loopengine-ray",
                         daemon=True).start()
        return job.future

    def cancel(self, future: Future[WorkResult]) -> None:
        """Stop the work: its steps are killed on the worker, then the worker if it hangs."""
        job = self._jobs.get(id(future))
        if job is None or future.done():
            return
        job.stopping = True
        ref = job.ref
        if ref is None:
            return
        try:
            ray.cancel(ref, force=False)  # a KeyboardInterrupt in the task: steps die first
        except Exception:  # already finished, or the cluster is gone
            return
        try:
            future.exception(timeout=CANCEL_GRACE)
        except Exception:  # still running after the grace, or finished with an error
            if not future.done():
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    return

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            self.cancel(job.future)
        self._jobs.clear()

    # -- one job, from submission to result ---------------------------------------------

    def _follow(self, job: _Job) -> None:
        lost: list[str] = []
        avoid: str | None = None
        try:
            for attempt in (1, 2):
                job.ref = self._launch(job.work, avoid)
                try:
                    result = ray.get(job.ref)
                except (ray.exceptions.TaskCancelledError, *_LOST) as exc:
                    if job.stopping:
                        raise ExecutorError("the measurements were cancelled") from exc
                    lost.append(describe(exc))
                    avoid = _node_in(str(exc))
                    if attempt == 1:
                        continue
                    raise ExecutorError(
                        f"the Ray cluster lost the measurements twice: {lost[0]}; retried "
                        f"once, then: {lost[1]}") from exc
                job.future.set_result(replace(result, retried=tuple(lost)))
                return
        except ExecutorError as exc:
            job.future.set_exception(exc)
        except ray.exceptions.RayError as exc:
            job.future.set_exception(ExecutorError(f"the Ray task failed: {_first(exc)}"))
        except Exception as exc:
            job.future.set_exception(ExecutorError(
                f"the Ray executor failed: {type(exc).__name__}: {_first(exc)}"))
        finally:
            self._jobs.pop(id(job.future), None)

    def _launch(self, work: Work, avoid: str | None) -> Any:
        options = dict(self._options)
        other = _other_node(avoid) if avoid else None
        if other is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # soft: when that node is busy, any other live node is as good.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=other,
                                                                            soft=True)
        return self._remote.options(**options).remote(work)


_LOST: tuple[type[BaseException], ...] = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.ObjectLostError,
)


def describe(exc: BaseException) -> str:
    """What happened to the work, in words a person understands."""
    text = _first(exc)
    node = _node_in(str(exc))
    where = f" (node {node[:12]})" if node else ""
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return f"the Ray task was cancelled{where}"
    if isinstance(exc, ray.exceptions.NodeDiedError | ray.exceptions.LocalRayletDiedError) \
            or ("node" in text.lower() and "died" in text.lower()):
        return f"the Ray node running the measurements died{where}"
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return f"the Ray worker running the measurements died{where}"
    return f"the measurements were lost{where}: {text}"


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _node_in(text: str) -> str | None:
    found = _NODE_ID.search(text)
    return found.group(1).lower() if found else None


def _other_node(avoid: str) -> str | None:
    for node in ray.nodes():
        if node.get("Alive") and node.get("NodeID") != avoid:
            return str(node["NodeID"])
    return None


# ---------------------------------------------------------------------------
# Joining the cluster


def connect(address: str) -> str:
    """Join the cluster (once per process); the address joined.

    ``auto``: ``RAY_ADDRESS`` when set, else the cluster this machine runs (``ray start
    --head``), else a private Ray started for this process (a laptop without a cluster).
    """
    with _connect_lock:
        if ray.is_initialized():
            return address
        target = address
        if address == "auto":
            target = os.environ.get("RAY_ADDRESS") or "auto"
        if target != "auto":
            _probe(target)
        elif _stale_local_cluster():
            target = "private"
        _keep_stdout_clean()
        options: dict[str, Any] = {
            # Workers' output must never reach our stdout (one record line, nothing else).
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "configure_logging": True,
        }
        # ray.init puts its own SIGTERM handler (sys.exit) in place of the engine's, which
        # must turn SIGTERM into a record and exit status 143: put ours back.
        main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if main else None
        try:
            return _init(address, target, options)
        finally:
            if main and handler is not None:
                signal.signal(signal.SIGTERM, handler)


def _init(address: str, target: str, options: dict[str, Any]) -> str:
    if target != "private":
        try:
            ray.init(address=target, **options)
            return target
        except ConnectionError as exc:
            if address != "auto" or target != "auto":
                raise ExecutorError(_unreachable(target, str(exc))) from exc
        except Exception as exc:
            raise ExecutorError(f"cannot join the Ray cluster at {target}: "
                                f"{type(exc).__name__}: {_first(exc)}") from exc
    print("loopengine: no Ray cluster is running here (ray start --head); starting a "
          "private one for this run", file=sys.stderr)
    try:
        ray.init(include_dashboard=False, **options)
    except Exception as exc:
        raise ExecutorError(f"could not start a private Ray here: {type(exc).__name__}: "
                            f"{_first(exc)}") from exc
    return "private"


def _keep_stdout_clean() -> None:
    """Ray's driver prints cluster events ("node ... marked dead") on stdout, where
    ``run`` prints exactly one record line; they belong on stderr."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_loopengine", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr._loopengine = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _stale_local_cluster() -> bool:
    """The address file of this machine's cluster names one that no longer answers (Ray's
    own connect would retry it for minutes)."""
    try:
        from ray._private.utils import read_ray_address

        found = read_ray_address()
    except Exception:
        return False
    if not found:
        return False
    try:
        _probe(found)
    except ExecutorError:
        return True
    return False


def _probe(address: str) -> None:
    """Fail fast, with a clear message, when nothing answers at ``host:port``."""
    if address.startswith("ray://"):
        address = address.removeprefix("ray://")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorError(f"executor.address: {address!r} is not host:port (or auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            why = f"no answer within {CONNECT_TIMEOUT:g}s"
        raise ExecutorError(_unreachable(address, why)) from exc


def _unreachable(address: str, why: str) -> str:
    return (f"cannot reach the Ray cluster at {address}: {why}; start it there with "
            "`ray start --head`, or point executor.address (or RAY_ADDRESS) at a running "
            "cluster's head, host:port")
