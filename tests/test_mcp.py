"""``loopengine mcp``: the SDK's own client talks to a real ``loopengine mcp`` process."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from conftest import PY, Repo, default_task
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

NOTES = "tasks/demo/notes.md"
TOOLS = {"validate", "run", "status", "results", "show", "history", "report"}


def diff(repo: Repo, text: str) -> str:
    """A unified diff that turns the artifact into ``text``; the tree left as it was."""
    before = repo.read(NOTES)
    repo.write(NOTES, text)
    patch = repo.git("diff", "--", NOTES)
    repo.write(NOTES, before)
    return patch


def serve(cwd: Path, body: Callable[[ClientSession], Awaitable[Any]],
          *args: str, seen: dict[str, Any] | None = None) -> Any:
    """Start ``python -m loopengine mcp ARGS`` in ``cwd``, run ``body`` against it
    (``seen["init"]``: what the server said when the session started)."""

    async def main() -> Any:
        params = StdioServerParameters(command=PY, args=["-m", "loopengine", "mcp", *args],
                                       cwd=str(cwd), env=dict(os.environ))
        with open(os.devnull, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), \
                    ClientSession(read, write) as session:
                init = await session.initialize()
                if seen is not None:
                    seen["init"] = init
                return await body(session)

    return anyio.run(main)


async def call(session: ClientSession, name: str, **arguments: Any) -> Any:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    data = result.structured_content
    assert data is not None
    return data.get("result", data) if set(data) == {"result"} else data


async def error(session: ClientSession, name: str, **arguments: Any) -> str:
    result = await session.call_tool(name, arguments)
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


def test_tools_a_keep_a_discard_and_status(repo: Repo) -> None:
    two = diff(repo, "first\nsecond\n")

    async def body(session: ClientSession) -> dict[str, Any]:
        listed = await session.list_tools()
        tools = {t.name: t for t in listed.tools}
        seen: dict[str, Any] = {"tools": tools}
        seen["validate"] = await call(session, "validate", task="tasks/demo/task.yaml")
        seen["keep"] = await call(session, "run", task="demo", patch=two)  # an id will do
        # Fewer lines than the new baseline: scored, and not better.
        seen["discard"] = await call(session, "run", task="tasks/demo/task.yaml",
                                     patch=diff(repo, ""))
        seen["status"] = await call(session, "status")
        seen["results"] = await call(session, "results", task="demo")
        seen["history"] = await call(session, "history")
        seen["show"] = await call(session, "show", run_id="last", lines=5)
        seen["report"] = await call(session, "report")
        return seen

    started: dict[str, Any] = {}
    seen = serve(repo.path, body, seen=started)
    # The server's instructions carry the guide: the loop, and what to do after each status.
    assert "What to do next" in started["init"].instructions
    assert started["init"].server_info.name == "loopengine"
    tools = seen["tools"]
    assert set(tools) == TOOLS
    # Descriptions an agent can act on: what each status means and what to do next.
    run_help = tools["run"].description
    for words in ("keep", "discard", "crash", "violations", "not_an_artifact", "log_tail",
                  "unified diff"):
        assert words in run_help, words
    assert "patch" in tools["run"].input_schema["properties"]
    assert tools["run"].input_schema["required"] == ["task"]

    assert seen["validate"] == {"ok": True, "task": "tasks/demo/task.yaml", "task_id": "demo",
                                "artifacts": [NOTES], "direction": "maximize", "errors": [],
                                "warnings": []}
    keep, discard = seen["keep"], seen["discard"]
    assert keep["status"] == "keep", keep["reason"]
    assert keep["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert repo.read(NOTES) == "first\nsecond\n"
    assert discard["status"] == "discard" and discard["candidate_score"] == 0.0
    assert discard["baseline_score"] == 2.0
    # The same data as the CLI: the records as stored, status as `status --json`.
    stored = repo.results()
    assert seen["results"] == stored and [r["run_id"] for r in stored] == [
        keep["run_id"], discard["run_id"]]
    cli_status = json.loads(repo.run("--json", command="status").stdout)
    assert seen["status"] == cli_status
    [task] = seen["status"]["tasks"]
    assert (task["keeps"], task["discards"], task["crashes"]) == (1, 1, 0)
    assert task["last_keep"]["commit"] == keep["commit"]
    cli_history = [json.loads(line) for line in
                   repo.run("--json", command="history").stdout.splitlines()]
    assert seen["history"] == cli_history and cli_history[0]["commit"] == keep["commit"]
    assert seen["show"]["run_id"] == discard["run_id"]
    assert seen["show"]["record"] == discard
    assert "-first" in seen["show"]["patch"]
    assert set(seen["show"]["logs"]) >= {"runner.log", "scorer.log"}
    assert seen["report"]["path"] == str(repo.path / "work/report.html")
    assert seen["report"]["tasks"][0]["keeps"] == 1


def test_the_repository_is_fixed_at_start(repo: Repo, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    subdir = repo.path / "tasks" / "demo"

    async def body(session: ClientSession) -> list[Any]:
        # Task paths are read relative to the repository, not to the server's cwd.
        return [await call(session, "validate", task="tasks/demo/task.yaml"),
                await call(session, "status")]

    for cwd, args in ((subdir, ()), (other, ("--repo", str(repo.path)))):
        valid, status = serve(cwd, body, *args)
        assert valid["ok"] is True and valid["task_id"] == "demo"
        assert status["repo"] == str(repo.path.resolve())


def test_errors_are_tool_errors_in_words(repo: Repo) -> None:
    repo.write_task(default_task(runner__timeout_secs=3), rel="tasks/bad/task.yaml")

    async def body(session: ClientSession) -> list[Any]:
        return [await call(session, "validate", task="tasks/bad/task.yaml"),
                await error(session, "show", run_id="nope"),
                await call(session, "run", task="tasks/nope/task.yaml")]

    invalid, unknown, crashed = serve(repo.path, body)
    assert invalid["ok"] is False and "runner.timeout_secs" in invalid["error"]
    assert invalid["errors"] == [invalid["error"]]  # every problem, as `validate` lists them
    assert "no run 'nope'" in unknown
    # A task file that cannot be read is a crash record, as `loopengine run` prints it.
    assert crashed["status"] == "crash" and crashed["crash_kind"] == "config"


def test_stdout_carries_nothing_but_protocol_messages(repo: Repo) -> None:
    """A raw session: every line the server writes is a JSON-RPC message, even while a
    run's steps print (here, the mutator is silent but the runner is chatty)."""
    repo.write_task(default_task(runner__command="echo runner says hello; echo oops >&2"))
    repo.commit("a chatty runner")
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "run", "arguments": {"task": "tasks/demo/task.yaml"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "status", "arguments": {}}},
    ]
    proc = subprocess.Popen([PY, "-m", "loopengine", "mcp"], cwd=repo.path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    answers: dict[int, Any] = {}
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for message in messages:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            if "id" in message:
                while message["id"] not in answers:
                    line = proc.stdout.readline()
                    assert line, proc.stderr.read() if proc.stderr else ""
                    parsed = json.loads(line)  # anything else on stdout fails here
                    assert parsed["jsonrpc"] == "2.0"
                    if "id" in parsed:
                        answers[parsed["id"]] = parsed
        proc.stdin.close()
        rest = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert proc.returncode == 0
    record = answers[2]["result"]["structuredContent"]
    assert record["status"] == "keep" and "says hello" not in json.dumps(answers[3])


def test_a_run_in_flight_ends_with_its_record_when_the_server_stops(repo: Repo,
                                                                    tmp_path: Path) -> None:
    """Closing the session while a run is under way: the run gets SIGTERM, writes its
    record (interrupted) and leaves nothing behind."""
    flag = tmp_path / "runner-started"
    repo.write_task(default_task(isolation={"write": [str(tmp_path)]},
                                 runner__command=f"touch {flag}; sleep 60"))
    repo.commit("a slow runner")

    async def body(session: ClientSession) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(session.call_tool, "run", {"task": "tasks/demo/task.yaml"})
            with anyio.fail_after(60):
                while not flag.exists():
                    await anyio.sleep(0.1)
            group.cancel_scope.cancel()

    serve(repo.path, body)
    # The client has closed the server; the run it started ends on its own, promptly.
    start = time.monotonic()
    while time.monotonic() - start < 90 and not repo.results():
        time.sleep(0.2)
    [record] = repo.results()
    assert record["status"] == "crash" and record["crash_kind"] == "interrupted"
    assert repo.git("worktree", "list", "--porcelain").count("worktree ") == 1
