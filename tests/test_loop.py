"""Loops (contract section 13): stop rules, the summary line, the state, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import PY, Repo, default_task

KEYS = ["loop_id", "task_id", "iterations", "keeps", "discards", "crashes", "start_score",
        "best_score", "stop_reason", "duration_seconds", "run_ids"]


def loop(repo: Repo, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    result = repo.run(*args, command="loop", task="")
    lines = result.stdout.splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr)
    return result.code, json.loads(lines[0]), result.stderr


def state(repo: Repo, loop_id: str) -> dict[str, Any]:
    return json.loads((repo.path / "work" / "loops" / loop_id / "state.json").read_text())


def set_task(repo: Repo, **overrides: Any) -> None:
    repo.write_task(default_task(**{"isolation": {"mode": "none"}, **overrides}))
    repo.commit("task")


def test_iterations_and_the_summary_line(repo: Repo) -> None:
    code, summary, stderr = loop(repo, "--task", "tasks/demo/task.yaml", "--iterations", "3")
    assert code == 0, stderr
    assert list(summary) == KEYS
    assert summary["iterations"] == 3 and summary["keeps"] == 3
    assert summary["stop_reason"] == "iterations"
    # Nothing stored before the loop: the first run measured the baseline (1 line).
    assert summary["start_score"] == 1.0
    assert summary["best_score"] == 4.0
    records = repo.results()
    assert [r["run_id"] for r in records] == summary["run_ids"]
    st = state(repo, summary["loop_id"])
    assert st["status"] == "finished" and st["iterations"] == 3
    # A summary table on stderr (plain: not a terminal).
    assert "run_id" in stderr and summary["run_ids"][0] in stderr
    assert len(repo.log()) == 1 + 3


def test_patience_target_and_max_crashes(repo: Repo) -> None:
    code, summary, _ = loop(repo, "--task", "tasks/demo/task.yaml", "--target", "3")
    assert code == 0 and summary["stop_reason"] == "target" and summary["best_score"] == 3.0
    assert summary["iterations"] == 2
    set_task(repo, policy__min_improvement=100.0)
    code, summary, _ = loop(repo, "--task", "tasks/demo/task.yaml", "--patience", "2")
    assert code == 0 and summary["stop_reason"] == "patience"
    assert summary["iterations"] == 2 and summary["discards"] == 2
    set_task(repo, runner__command="exit 5")
    code, summary, _ = loop(repo, "--task", "tasks/demo/task.yaml", "--max-crashes", "2",
                            "--iterations", "10")
    assert code == 1 and summary["stop_reason"] == "max_crashes" and summary["crashes"] == 2


def test_a_stop_file_ends_the_loop(repo: Repo) -> None:
    touch = f"{PY} -c \"import glob, pathlib; [pathlib.Path(d, 'STOP').touch() for d in " \
            f"glob.glob('{repo.path}/work/loops/*')]\""
    set_task(repo, runner__command=touch)
    code, summary, _ = loop(repo, "--task", "tasks/demo/task.yaml", "--iterations", "5")
    assert code == 0 and summary["stop_reason"] == "stop_file" and summary["iterations"] == 1


def test_max_seconds(repo: Repo) -> None:
    set_task(repo, runner__command="sleep 0.4")
    code, summary, _ = loop(repo, "--task", "tasks/demo/task.yaml", "--max-seconds", "0.5",
                            "--iterations", "20")
    assert code == 0 and summary["stop_reason"] == "max_seconds"
    assert 1 <= summary["iterations"] < 20


def test_batches_in_a_loop(repo: Repo) -> None:
    by_index = (f"{PY} -c \"import os; open('notes.md', 'a').write('x\\\\n' * "
                "(1 + int(os.environ['LOOPENGINE_CANDIDATE'])))\"")
    set_task(repo, mutator__command=by_index)
    code, summary, stderr = loop(repo, "--task", "tasks/demo/task.yaml", "--iterations", "2",
                                 "--candidates", "2", "--jobs", "2")
    assert code == 0, stderr
    assert summary["iterations"] == 2 and summary["keeps"] == 2 and summary["discards"] == 2
    assert len(summary["run_ids"]) == 4
    assert summary["best_score"] == 5.0
    assert len({r["batch_id"] for r in repo.results()}) == 2


def _wait_records(repo: Repo, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(repo.results()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_loop_killed_with_sigkill_is_resumed(repo: Repo, tmp_path: Path,
                                               procs: list[Any]) -> None:
    calls = tmp_path / "runner-calls"
    set_task(repo, runner__command=f"echo x >> {calls}; sleep 0.5")
    proc = subprocess.Popen([PY, "-m", "loopengine", "loop", "--task", "tasks/demo/task.yaml",
                             "--iterations", "5"], cwd=repo.path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    _wait_records(repo, 2, proc)
    time.sleep(0.2)  # into the third iteration's steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (loop_id,) = os.listdir(repo.path / "work" / "loops")
    assert state(repo, loop_id)["status"] == "running"
    before = len(calls.read_text().splitlines())
    code, summary, stderr = loop(repo, "--resume", loop_id)
    assert code == 0, stderr
    assert summary["loop_id"] == loop_id and summary["iterations"] == 5
    records = repo.results()
    # Not one iteration lost or repeated: every record of the loop is counted once.
    assert sorted(summary["run_ids"]) == sorted(r["run_id"] for r in records)
    assert len(set(summary["run_ids"])) == len(summary["run_ids"]) == 5
    # The resumed iterations reuse the stored baseline: one runner call each.
    resumed = [r for r in records[-2:]]
    assert all(r["baseline_source"] == "stored" for r in resumed)
    assert len(calls.read_text().splitlines()) - before == 2
    assert state(repo, loop_id)["status"] == "finished"
    assert repo.git("worktree", "list").count("\n") == 1


def test_sigint_saves_the_state_and_exits_130_then_resume(repo: Repo, procs: list[Any]) -> None:
    set_task(repo, runner__command="sleep 0.5")
    proc = subprocess.Popen([PY, "-m", "loopengine", "loop", "--task", "tasks/demo/task.yaml",
                             "--iterations", "4"], cwd=repo.path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    _wait_records(repo, 1, proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["stop_reason"] == "interrupted"
    st = state(repo, summary["loop_id"])
    assert st["status"] == "stopped" and st["current"] is None
    assert st["iterations"] == len(repo.results())
    code, resumed, _ = loop(repo, "--resume", summary["loop_id"])
    assert code == 0 and resumed["iterations"] == 4
    assert len(repo.results()) == 4 and resumed["stop_reason"] == "iterations"


def test_resume_refuses_what_it_cannot_continue(repo: Repo) -> None:
    result = repo.run("--resume", "nope", command="loop", task="")
    assert result.code == 1 and "no loop nope" in result.stderr
    _, summary, _ = loop(repo, "--task", "tasks/demo/task.yaml", "--iterations", "1")
    result = repo.run("--resume", summary["loop_id"], command="loop", task="")
    assert result.code == 1 and "has finished" in result.stderr
    result = repo.run(command="loop", task="")
    assert result.code == 2


def test_on_a_terminal_a_live_line_and_a_summary_table(repo: Repo) -> None:
    import pty
    import re
    import threading

    set_task(repo, runner__command="sleep 0.6")
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run([PY, "-m", "loopengine", "loop", "--task", "tasks/demo/task.yaml",
                           "--iterations", "2", "--max-seconds", "600"], cwd=repo.path,
                          stdout=subprocess.PIPE, stderr=follower,
                          env={**os.environ, "TERM": "xterm", "COLUMNS": "160"},
                          check=False, timeout=120)
    os.close(follower)
    reader.join(5)
    os.close(leader)
    assert proc.returncode == 0
    summary = json.loads(proc.stdout)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "iteration 1/2" in shown and "keeps 0" in shown and "left" in shown
    assert "iteration 2/2" in shown and "best 2" in shown
    assert f"loop {summary['loop_id']}: 2 iterations" in shown  # the table's title
    assert summary["run_ids"][1] in shown


def test_without_a_terminal_rich_is_never_imported(repo: Repo) -> None:
    script = ("import sys\nfrom loopengine.cli import main\n"
              "try:\n    main(['loop', '--task', 'tasks/demo/task.yaml', '--iterations', '1'])\n"
              "except SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'), "
              "file=sys.stderr)\n")
    proc = subprocess.run([PY, "-c", script], cwd=repo.path, capture_output=True, text=True,
                          check=False)
    assert json.loads(proc.stdout)["iterations"] == 1
    assert proc.stderr.endswith("[]\n"), proc.stderr


def test_a_batch_loop_killed_during_its_baseline_is_resumed(repo: Repo, tmp_path: Path,
                                                            procs: list[Any]) -> None:
    """Killed while the batch measures its baseline (its candidates are being prepared
    meanwhile): recovery gives the killed candidates their crash records, the iteration is
    counted once and not run again; the baseline measurement leaves no record."""
    started = tmp_path / "baseline-started"
    by_index = (f"{PY} -c \"import os; open('notes.md', 'a').write('x\\\\n' * "
                "(1 + int(os.environ['LOOPENGINE_CANDIDATE'])))\"")
    set_task(repo, mutator__command=by_index,
             runner__command=f'test -n "$LOOPENGINE_CANDIDATE" || {{ touch {started}; '
                             'sleep 3; }')
    proc = subprocess.Popen([PY, "-m", "loopengine", "loop", "--task", "tasks/demo/task.yaml",
                             "--iterations", "2", "--candidates", "2"], cwd=repo.path,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (loop_id,) = os.listdir(repo.path / "work" / "loops")
    started.unlink()
    code, summary, stderr = loop(repo, "--resume", loop_id)
    assert code == 0, stderr
    assert summary["iterations"] == 2, summary
    # One candidate was in flight (--jobs 1): its crash record; the other never started.
    assert (summary["crashes"], summary["keeps"], summary["discards"]) == (1, 1, 1)
    records = repo.results()
    assert sorted(r["run_id"] for r in records) == sorted(summary["run_ids"])
    assert len(records) == 3
