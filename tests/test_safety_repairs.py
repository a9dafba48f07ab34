"""Issue 9, points 2, 3 and 6: repairs undo only what the step provably did, and never
make an object unreachable.

A commit in another worktree, a fetch that moves ``origin/*`` and a second loop in another
worktree are not the step's doing: left alone, and reported.  A step that stashes the
user's edits in the main repository has its stash removed from ``refs/stash`` but kept
reachable under ``refs/loopengine/rescued/``, named in the record.  A step that kills the
engine leaves the snapshot of the git state on disk: the next run puts back what it
planted.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import PY, Repo
from conftest import default_task as conftest_task
from hardening_checks import checked, wait_for

IDENT = ["-c", "user.name=User", "-c", "user.email=user@example.com"]
# These steps act on the main repository by its absolute path, which only an unisolated
# step can: the tripwire that repairs it guards mode none (bwrap hides the repository).
UNISOLATED = {"mode": "none"}


def default_task(**overrides: Any) -> dict[str, Any]:
    """The demo task with isolation off: these steps reach the main repository and the
    test's folders on purpose (the scenarios of an unisolated run)."""
    overrides.setdefault("isolation", {"mode": "none"})
    return conftest_task(**overrides)


def start(repo: Repo, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml",
                             *args], cwd=repo.path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    import json

    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return json.loads(out.splitlines()[0])


def waiting_runner(tmp_path: Path) -> tuple[str, Path, Path]:
    started, go = tmp_path / "started", tmp_path / "go"
    return (f"echo 1 > {started}; while [ ! -e {go} ]; do sleep 0.05; done", started, go)


# -- point 2: other worktrees, fetches, other loops ----------------------------------------


def test_a_commit_in_another_worktree_while_a_step_runs_is_left_alone(
        repo: Repo, tmp_path: Path) -> None:
    command, started, go = waiting_runner(tmp_path)
    repo.write_task(default_task(isolation=UNISOLATED, runner__command=command))
    repo.commit("a runner that waits")
    other = tmp_path / "other"
    repo.git("worktree", "add", "-q", "-b", "feature", str(other))
    proc = start(repo)
    try:
        wait_for(started)
        (other / "feature.txt").write_text("the user's work\n")
        subprocess.run(["git", "add", "feature.txt"], cwd=other, check=True)
        subprocess.run(["git", *IDENT, "commit", "-qm", "the user's commit elsewhere"],
                       cwd=other, check=True)
        users = subprocess.run(["git", "rev-parse", "HEAD"], cwd=other, check=True,
                               capture_output=True, text=True).stdout.strip()
        go.touch()
        rec = finish(proc)
    finally:
        proc.kill()
    assert rec["status"] == "keep", rec
    assert repo.git("rev-parse", "feature").strip() == users
    assert any("refs/heads/feature" in x for x in rec["left_alone"]), rec  # type: ignore[union-attr]


def test_a_fetch_that_moves_origin_while_a_step_runs_is_left_alone(
        repo: Repo, tmp_path: Path) -> None:
    upstream = Repo(tmp_path / "upstream")
    upstream.write("a.txt", "a\n")
    upstream.commit("upstream")
    repo.git("remote", "add", "origin", str(upstream.path))
    repo.git("fetch", "-q", "origin")
    command, started, go = waiting_runner(tmp_path)
    repo.write_task(default_task(isolation=UNISOLATED, runner__command=command))
    repo.commit("a runner that waits")
    proc = start(repo)
    try:
        wait_for(started)
        upstream.write("a.txt", "b\n")
        moved = upstream.commit("upstream moves")
        upstream.git("tag", "v2")
        repo.git("fetch", "-q", "--tags", "origin")
        go.touch()
        rec = finish(proc)
    finally:
        proc.kill()
    assert rec["status"] == "keep", rec
    assert repo.git("rev-parse", "origin/main").strip() == moved
    assert repo.git("tag").split() == ["v2"]


def test_two_loops_in_two_worktrees_keep_each_others_keeps(repo: Repo, tmp_path: Path) -> None:
    repo.write_task(default_task(runner__command="sleep 1"))
    repo.commit("a slow runner")
    other = Repo.__new__(Repo)
    other.path = tmp_path / "second"
    repo.git("worktree", "add", "-q", "-b", "second", str(other.path))
    keeps: dict[str, int] = {"main": 0, "second": 0}
    for _ in range(2):
        a, b = start(repo), start(other)
        ra, rb = finish(a), finish(b)
        assert ra["status"] == "keep", ra
        assert rb["status"] == "keep", rb
        keeps["main"] += 1
        keeps["second"] += 1
    # Every keep is still on its branch: none was "put back" by the other loop's tripwire.
    assert repo.git("rev-list", "--count", "--grep=^loopengine(demo): keep", "main").strip() \
        == "2"
    assert repo.git("rev-list", "--count", "--grep=^loopengine(demo): keep", "second").strip() \
        == "2"
    assert sys.version_info >= (3, 11) and keeps == {"main": 2, "second": 2}


# -- point 3: a stash made by a step --------------------------------------------------------


def test_a_step_that_stashes_the_users_edits_never_makes_them_unreachable(
        repo: Repo, tmp_path: Path) -> None:
    repo.write("README.md", "the user's staged edit\n")
    repo.git("add", "README.md")
    repo.write("README.md", "the user's unstaged edit on top\n")
    runner = f"git -C {shlex.quote(str(repo.path))} stash -q"
    repo.write_task(default_task(isolation=UNISOLATED, runner__command=runner))
    repo.git("add", "tasks/demo/task.yaml")
    repo.git(*IDENT, "commit", "-qm", "a runner that stashes", "--", "tasks/demo/task.yaml")
    rec = checked(repo, repo.run())
    assert rec["status"] == "crash" and rec["crash_kind"] == "runner", rec
    reason = str(rec["reason"])
    assert "refs/stash created" in reason
    rescued = reason.split("kept reachable as ", 1)[1].split(")", 1)[0]
    assert rescued.startswith("refs/loopengine/rescued/")
    assert repo.git("stash", "list") == ""
    # The user's edits are one command away: staged and unstaged, exactly.
    repo.git("stash", "apply", "--index", rescued)
    assert repo.read("README.md") == "the user's unstaged edit on top\n"
    assert repo.git("show", ":README.md") == "the user's staged edit\n"


# -- point 6: a step that kills the engine --------------------------------------------------


def test_what_a_step_planted_before_killing_the_engine_is_put_back_by_the_next_run(
        repo: Repo, tmp_path: Path) -> None:
    main = shlex.quote(str(repo.path))
    pwned = tmp_path / "pwned"
    runner = (f"git -C {main} branch planted\n"
              f"printf '#!/bin/sh\\ntouch {pwned}\\n' > {main}/.git/hooks/pre-commit\n"
              f"chmod +x {main}/.git/hooks/pre-commit\n"
              f"{PY} {tmp_path / 'kill_engine.py'}\nsleep 30\n")
    # kill -9 $PPID, whatever sits between the step's shell and the engine (`python -m
    # loopengine run`; not the reaper shim of an unisolated step).
    (tmp_path / "kill_engine.py").write_text(
        "import os, signal\npid = os.getppid()\nwhile pid > 1:\n"
        "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "    if b'-m\\0loopengine\\0run\\0' in cmd:\n"
        "        os.kill(pid, signal.SIGKILL)\n        break\n"
        "    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n")
    (repo.path / ".git" / "hooks").mkdir(exist_ok=True)
    script = tmp_path / "runner.sh"
    script.write_text(runner)
    repo.write_task(default_task(isolation=UNISOLATED, runner__command=f"sh {script}"))
    repo.commit("a runner that kills the engine")
    killed = repo.run()
    assert killed.stdout == ""
    assert (repo.path / ".git" / "hooks" / "pre-commit").exists()  # planted, for now
    nxt = repo.run(task="tasks/missing.yaml").record
    assert nxt["crash_kind"] == "config"
    assert repo.git("branch", "--list", "planted") == ""
    assert not (repo.path / ".git" / "hooks" / "pre-commit").exists()
    [lost] = [r for r in repo.results() if r["run_id"] != nxt["run_id"]]
    assert lost["status"] == "crash"
    assert "refs/heads/planted created" in lost["reason"], lost
    assert ".git/hooks/pre-commit created" in lost["reason"], lost
    repo.git(*IDENT, "commit", "-q", "--allow-empty", "-m", "hooks would run now")
    time.sleep(0.1)
    assert not pwned.exists()
