"""Progress on stderr a person can follow; stdout stays the one JSON line."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import threading
from pathlib import Path

from conftest import PY, Repo, default_task

from loopengine.process import StepResult
from loopengine.progress import LiveReporter, Reporter, StderrReporter, make_reporter
from loopengine.results import Record

CHATTY_RUNNER = "echo first-line; echo working-hard; sleep 0.6"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(status: str = "keep", reason: str = "no baseline available") -> Record:
    return Record(task_id="demo", status=status, reason=reason, candidate_score=2.0,
                  diff_summary="", run_id="r", baseline_score=None, metrics={},
                  changed_files=[], changed_lines=0, patch=None, commit=None,
                  sandbox="worktree", started_at="2024-01-01T00:00:00.000Z",
                  duration_seconds=0.1, crash_kind=None, violations=[], log_tail=None)


def step(name: str, code: int | None, timed_out: bool = False) -> StepResult:
    return StepResult(name, code, timed_out, 1.25, Path(f"/nowhere/{name}.log"))


def test_the_reporter_fits_where_stderr_goes() -> None:
    assert type(make_reporter(False, io.StringIO())) is Reporter
    assert type(make_reporter(True, io.StringIO())) is StderrReporter
    live = make_reporter(False, Terminal())
    try:
        assert type(live) is LiveReporter
    finally:
        live.close()


def test_plain_lines_name_each_step_its_time_and_output() -> None:
    out = io.StringIO()
    reporter = StderrReporter(out, verbose=True)
    reporter.phase("sandbox")
    reporter.step_started("runner")
    callback = reporter.line_callback("runner")
    assert callback is not None
    callback("working-hard")
    reporter.step_finished("runner", step("runner", 3))
    reporter.step_finished("scorer", step("scorer", None, timed_out=True))
    reporter.finished(record("crash", "runner exited with status 3"))
    lines = [re.sub(r"^\[ *\d+\.\d\ds\] ", "[t] ", line) for line in out.getvalue().splitlines()]
    assert lines == ["[t] sandbox", "[t] runner started", "  runner| working-hard",
                     "[t] runner finished in 1.25s (exit 3)",
                     "[t] scorer finished in 1.25s (timed out)",
                     "[t] crash: runner exited with status 3"]


def test_live_lines_on_a_terminal() -> None:
    term = Terminal()
    reporter = make_reporter(False, term)
    assert isinstance(reporter, LiveReporter)
    reporter.step_started("mutator")
    reporter.step_finished("mutator", step("mutator", 0))
    reporter.step_started("runner")
    callback = reporter.line_callback("runner")
    assert callback is not None
    callback("\tlatest output  ")
    assert reporter.line.latest == "latest output"
    reporter.step_finished("runner", step("runner", 3))
    reporter.finished(record())
    reporter.close()  # again: harmless
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.getvalue())
    assert "✓ mutator    1.25s" in text
    assert "✗ runner     1.25s  exit 3" in text
    assert "keep  no baseline available" in text
    assert "runner| " not in text  # step output only with -v


def test_verbose_on_a_terminal_also_keeps_the_output_lines() -> None:
    term = Terminal()
    reporter = make_reporter(True, term)
    callback = reporter.line_callback("runner")
    assert callback is not None
    callback("one")
    reporter.close()
    assert "runner| one" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.getvalue())


def chatty(repo: Repo) -> None:
    repo.write_task(default_task(runner__command=CHATTY_RUNNER))
    repo.commit("a runner that talks")


def test_run_v_without_a_terminal_prints_plain_progress(repo: Repo, guarded) -> None:
    chatty(repo)
    result = guarded("-v")
    assert result.record["status"] == "keep"
    err = result.stderr.splitlines()
    assert any(line.endswith("] mutator started") for line in err)
    assert any(re.search(r"\] runner finished in 0\.\d\ds \(exit 0\)$", line) for line in err)
    assert "  runner| working-hard" in err
    # The first run measures its baseline (1 line) before the candidate (2 lines).
    assert err[-1].endswith("] keep: score 2.0 beats baseline 1.0 by 1 (higher is better, "
                            "min_improvement 0)")
    assert "\x1b[" not in result.stderr


def test_run_without_v_or_terminal_is_silent_and_never_imports_rich(repo: Repo) -> None:
    chatty(repo)
    script = ("import sys\nfrom loopengine.cli import main\n"
              "try:\n    main(['run', '--task', 'tasks/demo/task.yaml'])\n"
              "except SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'), "
              "file=sys.stderr)\n")
    proc = subprocess.run([PY, "-c", script], cwd=repo.path, capture_output=True, text=True,
                          check=False)
    assert json.loads(proc.stdout)["status"] == "keep"
    assert proc.stderr == "[]\n"


def test_run_on_a_terminal_shows_live_progress_and_stdout_stays_json(repo: Repo) -> None:
    chatty(repo)
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run([PY, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml"],
                          cwd=repo.path, stdout=subprocess.PIPE, stderr=follower,
                          env={**os.environ, "TERM": "xterm", "COLUMNS": "100"}, check=False,
                          timeout=60)
    os.close(follower)
    reader.join(5)
    os.close(leader)
    assert proc.returncode == 0
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "keep"
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "✓ mutator" in shown and "✓ runner" in shown and "✓ scorer" in shown
    assert "working-hard" in shown  # the runner's latest line, live
    assert "keep  score 2.0 beats baseline 1.0 by 1" in shown
