"""Several `loopengine run` processes on one repository (contract section 7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

from conftest import BIN, PY, Repo, default_task
from contract_checks import (
    all_dead,
    check_fields,
    check_record,
    finish_run,
    no_leftovers,
    read_pid,
    start_run,
    wait_for,
    worktrees,
)


def wave(repo: Repo, procs: list, n: int) -> list[dict]:
    started = [start_run(repo, procs) for _ in range(n)]
    return [check_record(repo, finish_run(p)) for p in started]


def every_line_whole(path: Path) -> list[dict]:
    """Each line of the results file is one whole JSON record: none cut, none interleaved."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.splitlines()]
    for rec in records:
        check_fields(rec)
    return records


def engine_commits(repo: Repo) -> list[str]:
    return [s for s in repo.log() if s.startswith("loopengine(")]


def test_parallel_runs_on_one_task_never_keep_twice_against_one_baseline(
        repo: Repo, procs, isolated_env: Path) -> None:
    repo.write_task(default_task(runner__command="sleep 1"))
    repo.commit("slow runner")
    head = repo.git("rev-parse", "HEAD").strip()
    records = wave(repo, procs, 4) + wave(repo, procs, 4)

    lines = every_line_whole(repo.path / "work" / "results.jsonl")
    assert sorted(r["run_id"] for r in lines) == sorted(r["run_id"] for r in records)
    assert len({r["run_id"] for r in lines}) == 8
    assert all(r["status"] in ("keep", "discard") for r in records), \
        [r["reason"] for r in records]
    keeps = [r for r in records if r["status"] == "keep"]
    per_baseline = Counter(r["baseline_score"] for r in keeps)
    assert all(n == 1 for n in per_baseline.values()), per_baseline
    assert 2 <= len(keeps) <= 8
    for r in records:
        if r["status"] == "discard":
            assert r["reason"] == "baseline changed during run; another iteration kept first"
    assert any(r["status"] == "discard" for r in records)  # the runs did overlap

    # The branch moved by exactly the keeps, each on top of the one before.
    chain = repo.git("rev-list", f"{head}..HEAD").split()
    assert sorted(chain) == sorted(r["commit"] for r in keeps)
    assert len(engine_commits(repo)) == len(keeps)
    scores = sorted(r["candidate_score"] for r in keeps)
    assert scores == [float(n) for n in range(2, 2 + len(keeps))]
    assert repo.read("tasks/demo/notes.md") == "first\n" + "more\n" * len(keeps)
    assert repo.git("status", "--porcelain") == ""
    no_leftovers(repo, isolated_env)


def test_a_commit_made_during_the_run_is_not_lost(repo: Repo, procs, isolated_env: Path,
                                                  tmp_path: Path) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    repo.write_task(default_task(isolation={"write": [str(tmp_path)]},
        runner__command=f"echo 1 > {started}; while [ ! -e {go} ]; do sleep 0.05; done"))
    repo.commit("waiting runner")
    proc = start_run(repo, procs)
    wait_for(started, proc)
    repo.write("README.md", "edited by the user while the run was under way\n")
    user_commit = repo.commit("the user's commit")
    repo.write("staged.txt", "staged by the user\n")
    repo.git("add", "staged.txt")
    repo.write("README.md", "an unstaged edit\n")
    go.touch()
    rec = check_record(repo, finish_run(proc))

    assert rec["status"] == "keep"
    assert repo.git("rev-parse", f"{rec['commit']}^").strip() == user_commit
    assert repo.git("rev-parse", "HEAD").strip() == rec["commit"]
    assert repo.git("show", "--format=", "--name-only", rec["commit"]).split() == \
        ["tasks/demo/notes.md"]
    assert repo.git("show", "HEAD:README.md") == \
        "edited by the user while the run was under way\n"
    assert repo.read("README.md") == "an unstaged edit\n"
    assert sorted(repo.git("status", "--porcelain").splitlines()) == [" M README.md",
                                                                     "A  staged.txt"]
    assert repo.read("tasks/demo/notes.md") == "first\nmore\n"
    no_leftovers(repo, isolated_env)


def test_the_user_committing_the_artifact_during_the_run_wins(
        repo: Repo, procs, isolated_env: Path, tmp_path: Path) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    repo.write_task(default_task(isolation={"write": [str(tmp_path)]},
        runner__command=f"echo 1 > {started}; while [ ! -e {go} ]; do sleep 0.05; done"))
    repo.commit("waiting runner")
    proc = start_run(repo, procs)
    wait_for(started, proc)
    repo.write("tasks/demo/notes.md", "the user's own words\n")
    user_commit = repo.commit("the user edits the artifact")
    go.touch()
    rec = check_record(repo, finish_run(proc))
    assert rec["status"] == "discard"
    assert rec["reason"] == "the main tree's artifacts changed while the iteration ran"
    assert repo.git("rev-parse", "HEAD").strip() == user_commit
    assert repo.read("tasks/demo/notes.md") == "the user's own words\n"
    assert repo.git("status", "--porcelain") == ""
    no_leftovers(repo, isolated_env)


def test_a_commit_made_by_the_runner_in_the_main_repo_is_put_back(
        repo: Repo, procs, isolated_env: Path) -> None:
    # A step that reaches the main repository by its absolute path: unlike the user's own
    # commit, its reflog entry carries the step's marker, so the tripwire (issue 3) puts
    # the branch back and the run is a crash naming the move.
    git = f"git -C {repo.path} -c user.name=U -c user.email=u@example.com"
    repo.write_task(default_task(isolation={"mode": "none"}, runner__command=(
        f"{git} commit -q --allow-empty -m 'made during the run'")))
    before = repo.commit("task")
    rec = check_record(repo, repo.run())
    assert rec["status"] == "crash" and rec["crash_kind"] == "runner"
    assert f"refs/heads/main moved from {before[:12]}" in rec["reason"]
    assert repo.git("rev-parse", "HEAD").strip() == before
    no_leftovers(repo, isolated_env)


def test_runs_on_two_tasks_at_once(repo: Repo, procs, isolated_env: Path) -> None:
    repo.write_task(default_task(runner__command="sleep 1"))
    repo.write("tasks/other/other.md", "one\n")
    other = repo.write_task(default_task(
        id="other", artifacts__include=["other.md"], runner__command="sleep 1",
        mutator__command=f"{PY} {BIN}/append_line.py other.md two", mutator__cwd="tasks/other",
        runner__cwd="tasks/other", scorer__cwd="tasks/other",
        scorer__command=f"{PY} {BIN}/score_lines.py other.md",
        logging__results_path="work/other.jsonl"), rel="tasks/other/task.yaml")
    head = repo.commit("two tasks")
    a, b = start_run(repo, procs), start_run(repo, procs, other)
    rec_a = check_record(repo, finish_run(a))
    rec_b = check_record(repo, finish_run(b), results="work/other.jsonl")
    assert (rec_a["status"], rec_b["status"]) == ("keep", "keep")
    assert (rec_a["task_id"], rec_b["task_id"]) == ("demo", "other")
    assert repo.git("rev-list", "--count", f"{head}..HEAD").strip() == "2"
    for rec, path in ((rec_a, "tasks/demo/notes.md"), (rec_b, "tasks/other/other.md")):
        assert repo.git("show", "--format=", "--name-only", rec["commit"]).split() == [path]
    assert repo.read("tasks/demo/notes.md") == "first\nmore\n"
    assert repo.read("tasks/other/other.md") == "one\ntwo\n"
    assert repo.git("status", "--porcelain") == ""
    no_leftovers(repo, isolated_env)


def test_a_run_killed_with_sigkill_is_cleaned_up_by_the_next_run(
        repo: Repo, procs, isolated_env: Path, tmp_path: Path) -> None:
    pidfile, second = tmp_path / "step.pid", tmp_path / "second"
    repo.write_task(default_task(isolation={"mode": "none"},
        runner__command=f"test -e {second} || {PY} {BIN}/ignore_term.py {pidfile}"))
    repo.commit("runner that hangs the first time")
    # The user's own worktrees, one of them already stale: neither is ours to remove.
    repo.git("worktree", "add", "-q", "--detach", str(tmp_path / "mine"))
    repo.git("worktree", "add", "-q", "--detach", str(tmp_path / "stale"))
    subprocess.run(["rm", "-rf", str(tmp_path / "stale")], check=True)
    foreign = isolated_env / "loopengine-not-ours"
    foreign.mkdir()
    users = worktrees(repo)
    head = repo.git("rev-parse", "HEAD").strip()

    proc = start_run(repo, procs)
    wait_for(pidfile, proc)
    active = os.listdir(repo.path / "work" / "runs" / ".active")
    assert len(active) == 1
    killed_id = active[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(os.listdir(isolated_env)) == 2  # its sandbox is left behind
    assert len(worktrees(repo)) == len(users) + 1

    second.touch()
    rec = check_record(repo, repo.run())
    assert rec["status"] == "keep" and rec["run_id"] != killed_id

    lost = [r for r in repo.results() if r["run_id"] == killed_id]
    assert len(lost) == 1
    check_fields(lost[0])
    assert lost[0]["status"] == "crash" and lost[0]["crash_kind"] == "interrupted"
    assert lost[0]["task_id"] == "demo"
    assert [r["run_id"] for r in repo.results()] == [killed_id, rec["run_id"]]

    assert os.listdir(isolated_env) == ["loopengine-not-ours"]
    assert worktrees(repo) == users
    assert (tmp_path / "mine" / "README.md").exists()
    assert all_dead([read_pid(pidfile)])  # the killed run's step does not live on
    assert repo.git("rev-parse", f"{rec['commit']}^").strip() == head
    assert repo.git("status", "--porcelain") == ""
    assert os.listdir(repo.path / "work" / "runs" / ".active") == []


def test_a_run_killed_while_making_its_sandbox_is_cleaned_up(
        repo: Repo, procs, isolated_env: Path) -> None:
    for i in range(1000):  # enough files that `git worktree add` takes a while
        repo.write(f"data/d{i % 20}/f{i}.txt", f"{i}\n")
    repo.commit("many files")
    admin = repo.path / ".git" / "worktrees"
    proc = start_run(repo, procs)
    while not (admin.exists() and os.listdir(admin)):
        assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_id = os.listdir(repo.path / "work" / "runs" / ".active")[0]

    rec = check_record(repo, repo.run())
    assert rec["status"] == "keep"
    lost = [r for r in repo.results() if r["run_id"] == killed_id]
    assert [(r["status"], r["crash_kind"]) for r in lost] == [("crash", "interrupted")]
    no_leftovers(repo, isolated_env)
    assert repo.git("status", "--porcelain") == ""


def test_a_ref_lock_held_by_another_git_process_is_left_alone(
        repo: Repo, procs, isolated_env: Path, tmp_path: Path) -> None:
    # While a step runs, the user's `git commit` (or another run's keep) holds
    # refs/heads/main.lock for a moment: it is not a broken ref a step made.
    assert check_record(repo, repo.run())["status"] == "keep"
    started, go = tmp_path / "started", tmp_path / "go"
    repo.write_task(default_task(isolation={"mode": "none"},
        mutator__command="true",
        runner__command=f"echo 1 > {started}; while [ ! -e {go} ]; do sleep 0.05; done"))
    repo.commit("no-op mutator, waiting runner")
    proc = start_run(repo, procs)
    wait_for(started, proc)
    lock = repo.path / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text(repo.git("rev-parse", "HEAD"))
    go.touch()
    rec = check_record(repo, finish_run(proc))
    assert (rec["status"], rec["reason"]) == ("discard", "candidate has no change")
    assert lock.exists()
    lock.unlink()
    no_leftovers(repo, isolated_env)
