"""``loopengine status``: each task's baseline, last keep, counts and running loop."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Repo, default_task

NOTES = "tasks/demo/notes.md"
# The runner fails when the caller sets FAIL_RUNNER: isolated steps see only what env lets in.
ISO = {"env": ["FAIL_RUNNER"]}


def propose(repo: Repo, tmp_path: Path, text: str, name: str) -> Path:
    """A patch that turns the artifact into ``text``, made with git; the tree left as it was."""
    before = repo.read(NOTES)
    repo.write(NOTES, text)
    diff = repo.git("diff", "--", NOTES)
    repo.write(NOTES, before)
    path = tmp_path / f"{name}.diff"
    path.write_text(diff)
    return path


def status(repo: Repo, *args: str) -> dict[str, Any]:
    result = repo.run("--json", *args, command="status")
    assert result.code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    return json.loads(result.stdout)


@pytest.fixture
def campaign(repo: Repo, tmp_path: Path) -> dict[str, Any]:
    """Two keeps, a discard, a mutator crash and a runner crash of the demo task."""
    repo.write_task(default_task(runner__command='test -z "$FAIL_RUNNER"', isolation=ISO))
    repo.commit("a runner that fails on demand")
    runs = []
    for i, text in enumerate(["first\nsecond\n", "first\nsecond\nthird\n", "first\n"]):
        result = repo.run("--patch", str(propose(repo, tmp_path, text, f"p{i}")))
        runs.append(result.record)
    bad = tmp_path / "bad.diff"
    bad.write_text(f"--- a/{NOTES}\n+++ b/{NOTES}\n@@ -1 +1 @@\n-not there\n+x\n")
    runs.append(repo.run("--patch", str(bad)).record)
    fourth = propose(repo, tmp_path, "first\nsecond\nthird\nfourth\n", "p4")
    runs.append(repo.run("--patch", str(fourth), env={"FAIL_RUNNER": "1"}).record)
    assert [r["status"] for r in runs] == ["keep", "keep", "discard", "crash", "crash"]
    assert [r["crash_kind"] for r in runs[3:]] == ["mutator", "runner"]
    return {"runs": runs}


def test_status_of_a_task_that_never_ran(repo: Repo) -> None:
    data = status(repo)
    assert data["repo"] == str(repo.path.resolve())
    [task] = data["tasks"]
    assert task["task_id"] == "demo"
    assert task["task_file"] == "tasks/demo/task.yaml"
    assert task["baseline"] is None and task["last_keep"] is None and task["loop"] is None
    assert (task["runs"], task["keeps"], task["discards"], task["crashes"]) == (0, 0, 0, 0)
    text = repo.run(command="status").stdout
    assert "demo  (tasks/demo/task.yaml)" in text
    assert "none yet" in text


def test_status_counts_keeps_discards_and_crashes_by_kind(repo: Repo,
                                                          campaign: dict[str, Any]) -> None:
    [task] = status(repo)["tasks"]
    runs = campaign["runs"]
    assert (task["runs"], task["keeps"], task["discards"], task["crashes"]) == (5, 2, 1, 2)
    assert task["crash_kinds"] == {"mutator": 1, "runner": 1}
    keep = task["last_keep"]
    assert keep["commit"] == repo.git("rev-parse", "HEAD").strip() == runs[1]["commit"]
    assert keep["run_id"] == runs[1]["run_id"]
    assert (keep["score"], keep["baseline_score"], keep["delta"]) == (3.0, 2.0, 1.0)
    assert task["best_kept_score"] == 3.0
    assert task["last_run"]["run_id"] == runs[-1]["run_id"]
    assert task["last_run"]["status"] == "crash"


def test_status_shows_the_current_baseline(repo: Repo, campaign: dict[str, Any]) -> None:
    [task] = status(repo)["tasks"]
    stored = json.loads((repo.path / "work/baselines/demo.json").read_text())
    base = task["baseline"]
    assert base["score"] == stored["score"] == 3.0
    assert base["run_id"] == stored["run_id"]
    assert base["fingerprint"] == stored["fingerprint"]
    assert base["metrics"] == {"bytes": len("first\nsecond\nthird\n")}
    assert base["measurements"] >= 1
    assert base["measured_at"].endswith("Z")
    assert base["current"] is True, base["why"]


def test_plain_text_when_piped(repo: Repo, campaign: dict[str, Any]) -> None:
    result = repo.run(command="status")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "demo  (tasks/demo/task.yaml)"
    by_label = {line.split()[0]: line for line in lines[1:]}
    assert by_label["baseline"].split()[1] == "3"
    assert "current: the next run compares with it" in result.stdout
    commit = campaign["runs"][1]["commit"]
    assert f"last keep  {commit[:12]}  score 3  delta +1" in result.stdout
    assert "keeps 2, discards 1, crashes 2 (mutator 1, runner 1)" in result.stdout
    assert "\x1b[" not in result.stdout


@pytest.mark.parametrize("change", ["evaluating file, uncommitted", "evaluating file, committed",
                                    "artifact", "scorer section", "description only",
                                    "untouched", "untracked file, untouched",
                                    "untracked file, edited"])
def test_current_is_what_the_next_run_decides(repo: Repo, tmp_path: Path,
                                              campaign: dict[str, Any], change: str) -> None:
    if change.startswith("untracked file"):
        # Present when the baseline was measured: the engine's start tree holds it.
        repo.write("data.txt", "scratch\n")
        repo.run("--patch", str(propose(repo, tmp_path, "x\n", "measure")))
        assert status(repo)["tasks"][0]["baseline"]["current"] is True
        if change.endswith("edited"):
            repo.write("data.txt", "scratch, edited\n")
    elif change.startswith("evaluating file"):
        repo.write("README.md", "a project, changed\n")
        if change.endswith(", committed"):
            repo.commit("readme")
    elif change == "artifact":
        repo.write(NOTES, "first\nsecond\nthird\nedited by hand\n")
        repo.commit("hand edit")
    elif change == "scorer section":
        repo.write_task(default_task(runner__command='test -z "$FAIL_RUNNER"', isolation=ISO,
                                     scorer__timeout_seconds=31))
    elif change == "description only":
        repo.write_task(default_task(runner__command='test -z "$FAIL_RUNNER"', isolation=ISO,
                                     description="said differently"))
    base = status(repo)["tasks"][0]["baseline"]
    expected = change in ("description only", "untouched", "untracked file, untouched")
    assert base["current"] is expected, base["why"]
    if change == "artifact":
        assert "artifacts changed" in base["why"]
    elif not expected:
        assert "evaluation changed" in base["why"]
    # The engine agrees: a stale baseline is measured again, a current one is reused.
    record = repo.run("--patch", str(propose(repo, tmp_path, repo.read(NOTES) + "more\n",
                                             "next"))).record
    assert (record["baseline_source"] == "stored") is expected


def test_status_finds_tasks_from_records_baselines_and_task_files(repo: Repo, tmp_path: Path,
                                                                   campaign: dict[str, Any]
                                                                   ) -> None:
    repo.write_task(default_task(id="other"), rel="tasks/other/task.yaml")
    repo.write("tasks/broken/task.yaml", "id: broken\n")
    data = status(repo)
    assert [t["task_id"] for t in data["tasks"]] == ["broken", "demo", "other"]
    broken = data["tasks"][0]
    assert "task.yaml" in broken["task_error"] and broken["task_file"] is None
    only = status(repo, "--task", "other")["tasks"]
    assert [t["task_id"] for t in only] == ["other"] and only[0]["runs"] == 0
    # A task whose file is gone still shows from its records and baseline.
    (repo.path / "tasks/demo/task.yaml").unlink()
    demo = status(repo, "--task", "demo")["tasks"][0]
    assert demo["runs"] == 5 and demo["baseline"]["score"] == 3.0
    assert demo["baseline"]["current"] is None


def test_unknown_task_is_an_error(repo: Repo) -> None:
    result = repo.run("--task", "nope", command="status")
    assert result.code == 1
    assert "no task 'nope'" in result.stderr
    assert status(repo, "--task", "nope")["tasks"] == []


def test_a_running_loop_is_shown_and_a_dead_one_is_not(repo: Repo) -> None:
    loops = repo.path / "work/loops"
    # A process that stands in for a loop: its command line names loopengine.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                              "loopengine", "loop"])
    try:
        for loop_id, pid, state in (("20261201T000000Z-dead", 2**22 + 12345, "running"),
                                    ("20261201T000001Z-live", alive.pid, "running"),
                                    ("20261201T000002Z-done", alive.pid, "finished")):
            (loops / loop_id).mkdir(parents=True)
            (loops / loop_id / "state.json").write_text(json.dumps(
                {"loop_id": loop_id, "task_id": "demo", "pid": pid, "iterations": 3,
                 "status": state, "host": socket.gethostname()}))
        loop = status(repo)["tasks"][0]["loop"]
        assert loop is not None and loop["loop_id"] == "20261201T000001Z-live"
        assert loop["pid"] == alive.pid and loop["iterations"] == 3
        assert "running: 20261201T000001Z-live" in repo.run(command="status").stdout
    finally:
        alive.kill()
        alive.wait()
    assert status(repo)["tasks"][0]["loop"] is None


def test_a_terminal_gets_a_rich_table(repo: Repo, campaign: dict[str, Any]) -> None:
    """stdout a terminal: colours and the same facts (rich is only imported then)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "loopengine", "status"], cwd=repo.path,
                            stdout=follower, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "200", "TERM": "xterm"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal's other end closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode()
    assert "\x1b[" in text
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "current: the next run compares with it" in plain
    assert "keeps 2, discards 1, crashes 2 (mutator 1, runner 1)" in plain


@pytest.mark.parametrize("ending", ["STOP file", "SIGKILL"])
def test_status_shows_a_real_loop_while_it_runs(repo: Repo, tmp_path: Path,
                                                procs: list[subprocess.Popen[str]],
                                                ending: str) -> None:
    started = tmp_path / "runner-started"
    release = tmp_path / "release"
    # The runner waits (10 s at most) until the test has looked: under load a fixed sleep
    # can end, and the loop stop on its STOP file, before `status` has read it.
    repo.write_task(default_task(
        isolation={"write": [str(tmp_path)]},  # the runner and the test talk through files
        runner__command=f"touch {started}; for i in $(seq 100); do "
                        f"[ -e {release} ] && break; sleep 0.1; done"))
    repo.commit("a slow runner")
    loop = subprocess.Popen([sys.executable, "-m", "loopengine", "loop", "--task",
                             "tasks/demo/task.yaml", "--iterations", "20"], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(loop)
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    [state_file] = (repo.path / "work/loops").glob("*/state.json")
    loop_id = state_file.parent.name
    task = status(repo)["tasks"][0]
    running = task["loop"]
    assert running is not None and running["loop_id"] == loop_id
    assert running["pid"] == loop.pid and running["stop_requested"] is False
    assert task["last_loop"]["status"] == "running" and not task["last_loop"]["resumable"]
    if ending == "STOP file":
        (state_file.parent / "STOP").touch()
        assert status(repo)["tasks"][0]["loop"]["stop_requested"] is True
        release.touch()
        out, err = loop.communicate(timeout=180)
        assert loop.returncode == 0, err
        assert json.loads(out)["stop_reason"]
        expected = "stopped"
    else:
        loop.kill()
        loop.wait()
        expected = "killed"
    task = status(repo)["tasks"][0]
    assert task["loop"] is None
    assert task["last_loop"]["loop_id"] == loop_id
    assert task["last_loop"]["status"] == expected and task["last_loop"]["resumable"]
    assert f"loopengine loop --resume {loop_id}" in repo.run(command="status").stdout
