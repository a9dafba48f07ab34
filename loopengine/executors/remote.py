"""Measurements shipped to another machine: what travels, and what a worker does with it.

The caller packs exactly two trees -- the one the sandbox started from (the baseline) and
the frozen candidate -- into one git pack (:func:`ship`), next to the evaluate stage's
request (:class:`~loopengine.iteration.common.EvalRequest`).  The worker
(:func:`measure`) needs nothing else: no working tree, no shared filesystem, not even the
repository's history.  It makes a sandbox of its own from the pack (a private object
store, the baseline checked out, the candidate's changes laid over it), runs the same
evaluate stage as a local run there (runner and scorer with the task's timeouts, the
baseline interleaved as the plan asks), and sends back the evaluation and the full step
logs.  Whatever happens, the worker's sandbox is removed.
"""

from __future__ import annotations

import platform
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from loopengine import git, sandbox, sync
from loopengine import measure as measure_mod
from loopengine.errors import LoopError
from loopengine.iteration.common import Crash, EvalRequest, Evaluation, Steps
from loopengine.iteration.evaluate import evaluate
from loopengine.progress import Reporter
from loopengine.task import Task

STEPS = ("runner", "scorer")
# A step log larger than this comes back cut in the middle (its head and tail kept).
MAX_LOG_BYTES = 32 << 20


@dataclass(frozen=True)
class Work:
    """Everything a worker needs to evaluate one candidate; small and picklable.

    ``request.task`` carries no path of the caller's machine (see :func:`portable_task`).
    """

    request: EvalRequest
    objects: bytes  # a git pack holding exactly the objects of the two trees
    object_format: str  # "sha1" | "sha256", as the caller's repository
    handed_at: float  # time.time() when handed over: waiting for a node uses the budget
    env: dict[str, str] = field(default_factory=dict)  # more step variables (a batch's)


@dataclass(frozen=True)
class WorkResult:
    evaluation: Evaluation
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


def make_work(req: EvalRequest, ctx: git.Context, env: dict[str, str] | None = None) -> Work:
    """``req`` ready to travel: its trees' objects read through ``ctx`` (the sandbox's)."""
    return Work(
        request=replace(req, task=portable_task(req.task)),
        objects=ship(ctx, req.start_tree, req.tree),
        object_format=object_format(req.start_tree),
        handed_at=time.time(),
        env=dict(env or {}),
    )


def ship(ctx: git.Context, *trees: str) -> bytes:
    """A pack of exactly the objects of ``trees`` (no commit, no history), read via ``ctx``."""
    listed = git.run(ctx, "rev-list", "--objects", "--no-object-names", *trees).stdout
    return git.run(ctx, "pack-objects", "--stdout", "-q", input=listed).stdout


def object_format(sha: str) -> str:
    return "sha256" if len(sha) == 64 else "sha1"


# ---------------------------------------------------------------------------
# The worker's side


def measure(work: Work, node: str | None = None) -> WorkResult:
    """Evaluate ``work`` in a sandbox of this machine's own, with the stage a local run
    uses (``iteration.evaluate``); failures come back as values, never as exceptions."""
    t0 = time.monotonic()
    req = work.request
    # Waiting for a free node used up part of the budget.
    waited = max(0.0, time.time() - work.handed_at)
    req = replace(req, seconds_left=req.seconds_left - waited)
    base = Path(tempfile.mkdtemp(prefix=f"{sandbox.PREFIX}remote-{req.run_id}-",
                                 dir=sandbox.sandbox_root()))
    logs = base / "logs"
    logs.mkdir()
    try:
        try:
            sb = _unpack(work, base)
            # There is no main tree here; isolation hides an empty folder in its place.
            (base / "main").mkdir()
            req = replace(req, task=replace(req.task, repo_root=base / "main"))
            steps = Steps(req.task, sb, req.run_id, logs,
                          deadline=time.monotonic() + req.seconds_left, report=Reporter(),
                          env=work.env)
            evaluation = evaluate(req, sb, steps)
        except LoopError as exc:
            evaluation = _failed(req, Crash(exc.crash_kind, str(exc)))
        except Exception as exc:
            (logs / "engine.log").write_text(traceback.format_exc())
            evaluation = _failed(req, Crash("internal", f"internal error on {platform.node()}: "
                                            f"{type(exc).__name__}: {exc}"))
        collected = {name: _read_log(logs / f"{name}.log") for name in STEPS}
    finally:
        sandbox._rmtree(base)
    return WorkResult(evaluation, {k: v for k, v in collected.items() if v is not None},
                      node=node or platform.node(), host=platform.node(),
                      seconds=time.monotonic() - t0)


def _failed(req: EvalRequest, crash: Crash) -> Evaluation:
    return Evaluation(measure_mod.Measurement(baseline=list(req.plan.stored)), crash=crash)


def _unpack(work: Work, base: Path) -> sandbox.Sandbox:
    """A sandbox holding the candidate over its baseline, from the shipped objects alone."""
    req = work.request
    store = base / "objects.git"
    fmt = [] if work.object_format == "sha1" else [f"--object-format={work.object_format}"]
    git.run(git.Context(base), "init", "--bare", "--quiet", *fmt, str(store))
    here = git.Context(base, git_dir=store)
    git.run(here, "index-pack", "--stdin", input=work.objects)
    # The steps get a repository of their own whose HEAD holds the baseline tree, as in a
    # local sandbox (there HEAD is the user's commit and the overlay shows as changes).
    head = git.run(here, "commit-tree", req.start_tree, "-m", f"loopengine: baseline of "
                   f"run {req.run_id}", env=_IDENTITY).stdout.decode().strip()
    tree = base / "tree"
    tree.mkdir()
    start_index = base / "start.index"
    ctx = git.Context(tree, git_dir=store, work_tree=tree)
    git.run(ctx.with_index(start_index), "read-tree", "--reset", "-u", req.start_tree)
    sandbox._private_git(tree, store, head=head, index=start_index)
    (tree / "work").mkdir(exist_ok=True)
    # The candidate laid over it, as the mutator left it in the caller's sandbox.
    sync.write_files(tree, ctx, req.changes)
    return sandbox.Sandbox("copy", base, tree, ctx, None, start_index, req.start_tree, head)


_IDENTITY = {
    "GIT_AUTHOR_NAME": "loopengine", "GIT_AUTHOR_EMAIL": "loopengine@localhost",
    "GIT_COMMITTER_NAME": "loopengine", "GIT_COMMITTER_EMAIL": "loopengine@localhost",
    "GIT_AUTHOR_DATE": "1970-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "1970-01-01T00:00:00Z",
}


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
