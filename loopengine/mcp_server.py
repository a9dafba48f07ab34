"""``loopengine mcp``: the commands as MCP tools over stdio, for agents.

Built on the official ``mcp`` SDK (``MCPServer``, the SDK's high-level server).  Each
tool returns the data the CLI prints with ``--json`` (``status``, ``results``,
``history``, ``report``), the record ``run`` prints, or, for ``validate`` and ``show``
(whose CLI output is for people), the same facts as one object.  They call the library
functions the CLI calls; ``run`` is a real ``loopengine run`` subprocess, so that a run
started by an agent is exactly a run started by a person: its own process group for the
steps, its signals, its record on its stdout.

The repository is fixed when the server starts (``--repo`` or the cwd rule); task paths
given to the tools are read relative to it.  The SDK points fd 1 at stderr while it
serves, so nothing but protocol messages reaches stdout, whatever a library prints.

The module is named ``mcp_server`` so that ``import mcp`` always means the SDK.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from loopengine.errors import LoopError

# What each status means and what to do next: the guide, said to the agent once.
STATUSES = """Statuses: `keep` -- the candidate beat the baseline; it is in the main tree \
(and committed, with Loopengine-* trailers) and is the new baseline: build on it. \
`discard` with `violations` -- it broke a rule and was never scored (`not_an_artifact`: \
touch only artifact files; `max_changed_lines` / `max_files_per_iteration`: make a \
smaller change; `allowed_file_types`, `binary_change`, `mode_change`, `deleted_artifact`: \
edit the text of existing artifacts only; `constraint.*`: a metric is out of bounds). \
`discard` without violations -- it was scored and not better (or inconclusive): try a \
different idea; "baseline changed during run": another run kept first, run again. \
`crash` -- nothing changed; fix the cause before trying more: `config` (the task file, \
the reason names the field), `mutator` (a patch that does not apply: regenerate it \
against the current tree), `runner` / `scorer` (read `log_tail`), `timeout` / `budget` \
(too slow), `sandbox` (the repository is mid-merge or an artifact is half-staged), \
`internal` (a loopengine bug; `show` the run)."""

INSTRUCTIONS = f"""loopengine runs one candidate change of a task's artifact files in a \
throwaway sandbox, scores it, and keeps it only if it beats the baseline. You decide what \
to try; each `run` is one try. Start with `status` (where each task stands), `validate` a \
task file, then `run` with a unified diff of the artifacts as `patch` (or without one, to \
let the task's mutator propose). Read the record's `status` and `reason`. {STATUSES} \
Look back with `results`, `history` (the keep commits), `show` (one run's record, patch \
and logs) and `report` (an HTML page for people)."""


def instructions() -> str:
    """The summary above, then the whole guide (``loopengine guide``) for the details."""
    from loopengine.commands.guide import guide_text

    return (f"{INSTRUCTIONS}\n\nThe guide follows; its `loopengine X` commands are this "
            f"server's tools of the same names.\n\n{guide_text()}")


def build_server(root: Path) -> MCPServer:
    server: MCPServer = MCPServer("loopengine", instructions=instructions(),
                                  log_level="WARNING")

    @server.tool(description=(
        "Check a task file without running anything. `task` is the path of a task.yaml, "
        "relative to the repository root (e.g. tasks/ID/task.yaml), or a task id ID for "
        "tasks/ID/task.yaml. Returns {ok: true, "
        "task_id, task, artifacts, direction} or {ok: false, error}: the error names the "
        "file and the dotted field to fix."))
    def validate(task: str) -> dict[str, Any]:
        return validate_task(root, task)

    @server.tool(description=(
        "Run one iteration of a task (`task`: its task.yaml path relative to the "
        "repository root, or its id for tasks/ID/task.yaml): make a candidate (from "
        "`patch`, a unified diff as `git diff` prints it, paths relative to the "
        "repository root, against the tree as it is now, touching only artifact files; "
        "or, without `patch`, from the task's mutator), evaluate it in a sandbox and "
        "keep it only if it beats the baseline. The first run of a task (or after the "
        "evaluation changed) also measures the baseline. Returns the result record, as "
        "`loopengine run` prints it: `status`, `reason`, `candidate_score`, "
        "`baseline_score`, `violations`, `crash_kind`, "
        "`log_tail`, `run_id`, `commit`, ... " + STATUSES))
    async def run(task: str, patch: str | None = None) -> dict[str, Any]:
        return await run_task(root, task, patch)

    @server.tool(description=(
        "Where each task stands (the same object as `loopengine status --json`): its "
        "stored baseline (score, metrics, measurements, and `current`: whether the next "
        "run compares with it, false when the artifacts or the evaluation changed -- then "
        "the next run measures it again), the last keep (commit, score, delta), counts of "
        "keeps, discards and crashes by kind, the last run, and a running loop if any. "
        "Runs nothing. `task`: one task id, or all tasks."))
    def status(task: str | None = None) -> dict[str, Any]:
        from loopengine.commands.status import collect

        return collect(root, task)

    @server.tool(description=(
        "The result records, oldest first, as stored in work/results.jsonl (what "
        "`loopengine results --json` prints): `task` keeps one task id's records, `last` "
        "the last N of them. Each record has `status`, `reason`, `candidate_score`, "
        "`baseline_score`, `run_id`, `commit`, `crash_kind`, `violations`, ..."))
    def results(task: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        return read_results(root, task, last)

    @server.tool(description=(
        "One run: its record, its candidate patch (text; apply it with `git apply` at the "
        "repository root), and the end of each step's log (mutator, runner, scorer; "
        "`lines` lines each). `run_id`: a run id, a unique prefix or suffix of one, or "
        "`last` for the newest run."))
    def show(run_id: str, lines: int = 40) -> dict[str, Any]:
        return show_run(root, run_id, lines)

    @server.tool(description=(
        "The keep commits of the current branch, newest first, read from their "
        "Loopengine-* trailers (what `loopengine history --json` prints): commit, date, "
        "task, run, score, baseline, delta. `task` keeps one task id's keeps."))
    def history(task: str | None = None) -> list[dict[str, Any]]:
        from loopengine.commands.history import read_keeps

        return [k.to_json() for k in _library(read_keeps, root, task)]

    @server.tool(description=(
        "Write the HTML report (a chart of score per run, best so far, keeps, discards, "
        "crashes by kind, and the table of keeps; one file that needs no network) for a "
        "person to open. Returns its path and each task's figures (what `loopengine "
        "report --json` prints). `out`: the file to write (relative to the repository "
        "root; default work/report.html); `task`: one task id, or all."))
    def report(task: str | None = None, out: str | None = None) -> dict[str, Any]:
        from loopengine.report import write_report

        target = None if out is None else _inside(root, out)
        return _library(write_report, root, task, target).summary()

    return server


def _library(function: Any, *args: Any) -> Any:
    """Call a library function; its expected failure is the tool's error, in its words."""
    try:
        return function(*args)
    except LoopError as exc:
        raise ToolError(str(exc)) from None


def _inside(root: Path, path: str) -> Path:
    return Path(path) if os.path.isabs(path) else root / path


def _task_file(root: Path, task: str) -> Path:
    """A task file's path, relative to the repository; or a task id, for
    ``tasks/<id>/task.yaml`` when no file of that name exists."""
    path = _inside(root, task)
    by_id = root / "tasks" / task / "task.yaml"
    if not path.exists() and "/" not in task and by_id.is_file():
        return by_id
    return path


def validate_task(root: Path, task: str) -> dict[str, Any]:
    from loopengine.commands.validate import check

    try:
        checked = check(root, str(_task_file(root, task)))
    except LoopError as exc:
        return {"ok": False, "task": task, "error": str(exc), "errors": [str(exc)],
                "warnings": []}
    loaded = checked.task
    if loaded is None or not checked.ok:
        return {"ok": False, "task": task, "error": checked.errors[0],
                "errors": checked.errors, "warnings": checked.warnings}
    return {"ok": True, "task": task, "task_id": loaded.id,
            "artifacts": list(loaded.include), "direction": loaded.direction,
            "errors": [], "warnings": checked.warnings}


def read_results(root: Path, task: str | None, last: int | None) -> list[dict[str, Any]]:
    from loopengine.results import DEFAULT_RESULTS, read_records

    records, _ = read_records(root / DEFAULT_RESULTS)
    chosen = [r for r in records if task is None or r.get("task_id") == task]
    if last is not None:
        chosen = chosen[-last:] if last > 0 else []
    return chosen


def show_run(root: Path, run_id: str, lines: int) -> dict[str, Any]:
    from loopengine.commands.show import load_run, tail_lines

    view = _library(load_run, root, run_id)
    logs = {}
    for log in view.logs():
        kept, cut = tail_lines(log, max(lines, 0))
        logs[log.name] = {"tail": "\n".join(kept), "cut": cut}
    return {"run_id": view.run_id, "record": view.record, "record_problem": view.record_problem,
            "patch": None if view.patch is None else view.patch.decode("utf-8", "replace"),
            "logs": logs}


async def run_task(root: Path, task: str, patch: str | None) -> dict[str, Any]:
    """``loopengine run`` as a subprocess; its one stdout line, the record, as data.

    A cancelled call (the client gave up, the server is stopping) sends the run SIGTERM
    and waits for it: it ends as ``run`` always ends, with a record and no leftovers.
    """
    argv = [sys.executable, "-m", "loopengine", "run", "--task", str(_task_file(root, task)),
            "--repo", str(root)]
    if patch is not None:
        argv += ["--patch", "-"]
    process = await anyio.open_process(argv, cwd=root, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_drain, process.stdout, out)
            group.start_soon(_drain, process.stderr, err)
            assert process.stdin is not None
            async with process.stdin:
                if patch is not None:
                    await process.stdin.send(patch.encode("utf-8"))
        code = await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(120):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        raise
    lines = out.decode("utf-8", "replace").splitlines()
    if len(lines) == 1:
        try:
            record = json.loads(lines[0])
        except ValueError:
            record = None
        if isinstance(record, dict):
            return record
    message = err.decode("utf-8", "replace").strip() or out.decode("utf-8", "replace").strip()
    raise ToolError(f"loopengine run exited with status {code} without a record: "
                    f"{message[-4000:]}")


async def _drain(stream: Any, into: bytearray) -> None:
    if stream is None:
        return
    async for chunk in stream:
        into.extend(chunk)


def serve(root: Path) -> None:
    """Serve until the client closes stdin."""
    build_server(root).run("stdio")
