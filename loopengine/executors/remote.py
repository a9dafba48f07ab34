"""Measurements shipped to another machine: what travels, and what a worker does with it.

The caller packs exactly two trees -- the one the sandbox started from (the baseline) and
the frozen candidate -- into one git pack (:func:`ship`).  The worker (:func:`measure`)
needs nothing else: no working tree, no shared filesystem, not even the repository's
history.  It makes a sandbox of its own from the pack (a private object store, the
baseline checked out, the candidate's changes read from a real diff of the two trees),
runs the runner and scorer there with the task's timeouts through the same measurement
loop as a local run (``measure.py``), and sends back the measurements, the crash (if any)
and the full step logs.  Whatever happens, the worker's sandbox is removed.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loopengine import diff, git, sandbox, score
from loopengine import measure as measure_mod
from loopengine.errors import LoopError
from loopengine.process import log_tail, run_step, step_env
from loopengine.task import Step, Task

STEPS = ("runner", "scorer")
# A step log larger than this comes back cut in the middle (its head and tail kept).
MAX_LOG_BYTES = 32 << 20
NODE_VAR = "LOOPENGINE_NODE"


@dataclass(frozen=True)
class Work:
    """Everything a worker needs to measure one candidate (and its baseline); picklable.

    ``task`` carries no path of the caller's machine (see :func:`portable_task`).
    """

    run_id: str
    task: Task
    plan: measure_mod.Plan
    start_tree: str  # the tree the sandbox started from: the baseline's
    candidate_tree: str
    objects: bytes  # a git pack holding exactly the objects of the two trees
    object_format: str  # "sha1" | "sha256", as the caller's repository
    has_change: bool
    seconds_left: float  # of budget.max_seconds when the work was handed over
    handed_at: float  # time.time() then: waiting for a node counts against the budget
    marked_logs: bool = False  # with repeats: step logs say which measurement is which


@dataclass(frozen=True)
class Crash:
    kind: str
    reason: str
    tail: str | None = None


@dataclass(frozen=True)
class WorkResult:
    measured: measure_mod.Measurement
    crash: Crash | None
    logs: dict[str, bytes] = field(default_factory=dict)  # step name -> its full log
    node: str | None = None  # the Ray node id, or the host name elsewhere
    host: str = ""
    seconds: float = 0.0  # from the worker's start to its end
    retried: tuple[str, ...] = ()  # what happened to attempts that were lost first


# ---------------------------------------------------------------------------
# The caller's side


def portable_task(task: Task) -> Task:
    """The task without the caller's paths (the worker has no use for them)."""
    relative = Path(task.task_dir) / task.path.name  # as the sandbox has it
    return replace(task, path=relative, display_path=relative.as_posix(), repo_root=Path("."),
                   data={})


def ship(ctx: git.Context, *trees: str) -> bytes:
    """A pack of exactly the objects of ``trees`` (no commit, no history), read via ``ctx``."""
    listed = git.run(ctx, "rev-list", "--objects", "--no-object-names", *trees).stdout
    return git.run(ctx, "pack-objects", "--stdout", "-q", input=listed).stdout


def object_format(sha: str) -> str:
    return "sha256" if len(sha) == 64 else "sha1"


# ---------------------------------------------------------------------------
# The worker's side


class _StepFailed(LoopError):
    def __init__(self, kind: str, reason: str, tail: str | None = None) -> None:
        super().__init__(reason)
        self.crash_kind = kind
        self.tail = tail


def measure(work: Work, node: str | None = None) -> WorkResult:
    """Measure ``work`` in a sandbox of this machine's own; never raises for a step."""
    t0 = time.monotonic()
    # Waiting for a free node used up part of the budget (never less than nothing).
    waited = max(0.0, time.time() - work.handed_at)
    deadline = t0 + work.seconds_left - waited
    measured = measure_mod.Measurement(baseline=list(work.plan.stored))
    crash: Crash | None = None
    base = Path(tempfile.mkdtemp(prefix=f"{sandbox.PREFIX}remote-{work.run_id}-",
                                 dir=sandbox.sandbox_root()))
    logs = base / "logs"
    logs.mkdir()
    try:
        sb = _unpack(work, base)
        crash = _measure_in(work, sb, logs, deadline, measured)
    except _StepFailed as exc:
        crash = Crash(exc.crash_kind, str(exc), exc.tail)
    except LoopError as exc:
        crash = Crash(exc.crash_kind, str(exc))
    except Exception as exc:
        (logs / "engine.log").write_text(traceback.format_exc())
        crash = Crash("internal", f"internal error on {platform.node()}: "
                      f"{type(exc).__name__}: {exc}")
    finally:
        collected = {name: _read_log(logs / f"{name}.log") for name in STEPS}
        sandbox._rmtree(base)
    return WorkResult(measured, crash, {k: v for k, v in collected.items() if v is not None},
                      node=node or platform.node(), host=platform.node(),
                      seconds=time.monotonic() - t0)


def _measure_in(work: Work, sb: sandbox.Sandbox, logs: Path, deadline: float,
                measured: measure_mod.Measurement) -> Crash | None:
    task = work.task
    changes = diff.read_diff(sb.ctx, work.start_tree, work.candidate_tree).files

    def run(name: str, step: Step, capture: bool = False) -> str:
        return _run(work, sb, logs, deadline, name, step, capture)

    def parse(stdout: str) -> tuple[float, dict[str, Any]]:
        try:
            return score.parse_output(stdout, task.parse)
        except score.ScoreError as exc:
            raise _StepFailed("scorer", str(exc), log_tail(logs / "scorer.log")) from exc

    evaluator = measure_mod.Evaluator(task, sb, changes, run, parse,
                                      log_dir=logs if work.marked_logs else None,
                                      current=measure_mod.BASELINE)
    measure_mod.measure(task, evaluator, work.plan, measured, has_change=work.has_change,
                        time_left=lambda: deadline - time.monotonic())
    return None


def _unpack(work: Work, base: Path) -> sandbox.Sandbox:
    """A sandbox holding the baseline tree, from the shipped objects alone."""
    store = base / "objects.git"
    fmt = [] if work.object_format == "sha1" else [f"--object-format={work.object_format}"]
    git.run(git.Context(base), "init", "--bare", "--quiet", *fmt, str(store))
    here = git.Context(base, git_dir=store)
    git.run(here, "index-pack", "--stdin", input=work.objects)
    # The steps get a repository of their own whose HEAD holds the baseline tree, as in a
    # local sandbox (there HEAD is the user's commit and the overlay shows as changes).
    head = git.run(here, "commit-tree", work.start_tree, "-m", f"loopengine: baseline of "
                   f"run {work.run_id}", env=_IDENTITY).stdout.decode().strip()
    tree = base / "tree"
    tree.mkdir()
    start_index = base / "start.index"
    ctx = git.Context(tree, git_dir=store, work_tree=tree)
    git.run(ctx.with_index(start_index), "read-tree", "--reset", "-u", work.start_tree)
    sandbox._private_git(tree, store, head=head, index=start_index)
    (tree / "work").mkdir(exist_ok=True)
    return sandbox.Sandbox("copy", base, tree, ctx, None, start_index, work.start_tree, head)


_IDENTITY = {
    "GIT_AUTHOR_NAME": "loopengine", "GIT_AUTHOR_EMAIL": "loopengine@localhost",
    "GIT_COMMITTER_NAME": "loopengine", "GIT_COMMITTER_EMAIL": "loopengine@localhost",
    "GIT_AUTHOR_DATE": "1970-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "1970-01-01T00:00:00Z",
}


def _run(work: Work, sb: sandbox.Sandbox, logs: Path, deadline: float, name: str,
         step: Step, capture: bool) -> str:
    """One step in the worker's sandbox: the local engine's rules, this machine's env."""
    task = work.task
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _StepFailed("budget", f"budget.max_seconds ({task.max_seconds:g}s) was used up "
                          f"before the {name} could start")
    cwd = sb.tree / step.cwd
    if not cwd.is_dir():
        raise _StepFailed("config", f"{name}.cwd: {step.cwd!r} does not exist in the sandbox")
    timeout = min(step.timeout_seconds, remaining)
    log = logs / f"{name}.log"
    out = logs / f"{name}.stdout" if capture else None
    # The worker's own environment, never the caller's: it holds no secret of the caller.
    env = step_env(os.environ, {
        "LOOPENGINE_SANDBOX": str(sb.tree),
        "LOOPENGINE_TASK_DIR": str(sb.tree / task.task_dir),
        "LOOPENGINE_RUN_ID": work.run_id,
    })
    result = run_step(name, step.command, cwd=cwd, env=env, timeout=timeout, log_path=log,
                      stdout_path=out)
    if result.timed_out:
        tail = log_tail(log)
        if timeout < step.timeout_seconds:
            raise _StepFailed("budget", f"{name} was stopped after {timeout:.3g}s: "
                              f"budget.max_seconds ({task.max_seconds:g}s) ran out", tail)
        raise _StepFailed("timeout", f"{name} timed out after {step.timeout_seconds:g}s "
                          f"({name}.timeout_seconds)", tail)
    if result.exit_code != 0:
        code = result.exit_code
        how = f"was killed by signal {-code}" if code is not None and code < 0 else \
            f"exited with status {code}"
        raise _StepFailed(name, f"{name} {how}", log_tail(log))
    if out is None:
        return ""
    return out.read_bytes().decode("utf-8", "replace")


def _read_log(path: Path) -> bytes | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if size <= MAX_LOG_BYTES:
                return fh.read()
            half = MAX_LOG_BYTES // 2
            head = fh.read(half)
            fh.seek(size - half)
            tail = fh.read(half)
    except OSError:
        return None
    cut = f"\n--- loopengine: {size - 2 * half} bytes cut here ---\n".encode()
    return head + cut + tail


def write_logs(result: WorkResult, folder: Path) -> None:
    """The worker's step logs into the caller's ``work/runs/<run_id>/``, appended."""
    folder.mkdir(parents=True, exist_ok=True)
    lost = "".join(f"--- loopengine: {why}; retried once ---\n" for why in result.retried)
    where = f"--- loopengine: measured on {result.host}, node {result.node} ---\n"
    for name, data in result.logs.items():
        with open(folder / f"{name}.log", "ab") as fh:
            fh.write((lost + where).encode() + data)
