"""sandbox.reuse: a pool member, reset before each use, is indistinguishable from a fresh
sandbox; concurrent runs get their own members; what cannot be reset is a crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import conftest
import pytest
from conftest import BIN, PY, Repo, Result, State, assert_guarantees, default_task

POOL = "loopengine-pool-"


def check_record(repo: Repo, result: Result) -> dict[str, Any]:
    """One JSON line on stdout, the same line in results.jsonl, the exit code to match."""
    rec = result.record
    assert [r for r in repo.results() if r["run_id"] == rec["run_id"]] == [rec]
    assert result.code == (1 if rec["status"] == "crash" else 0), result.stderr
    return rec


def pooled_snapshot(r: Repo, sandboxes: Path) -> State:
    """conftest's snapshot, blind to the pools: they are meant to outlive a run."""
    state = _snapshot(r, sandboxes)
    state.sandboxes = [s for s in state.sandboxes if not s.startswith(POOL)]
    blocks = [b.strip() for b in state.worktrees.split("\n\n")]
    state.worktrees = "\n\n".join(b for b in blocks if b and POOL not in b)
    return state


_snapshot = conftest.snapshot


@pytest.fixture
def reuse_guarded(repo: Repo, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs loopengine and asserts section 3's guarantees, pool members aside."""
    monkeypatch.setattr(conftest, "snapshot", pooled_snapshot)

    def call(*args: str, **kwargs: Any) -> Result:
        before = pooled_snapshot(repo, isolated_env)
        result = repo.run(*args, **kwargs)
        check_record(repo, result)
        assert_guarantees(repo, before, isolated_env, result.record)
        return result

    return call


def members(sandboxes: Path) -> list[Path]:
    return sorted(p for pool in sandboxes.glob(f"{POOL}*") for p in pool.iterdir()
                  if p.is_dir())


def worktree_paths(repo: Repo) -> list[str]:
    return [line.split(" ", 1)[1] for line in
            repo.git("worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def messy_repo(repo: Repo, reports: Path) -> None:
    """Files for damage.py to spoil; a reuse task and a fresh twin, both listing the tree."""
    repo.write(".gitignore", "/work/\nbuild/\n*.tmp\n")
    repo.write("docs/remove-me.txt", "tracked\n")
    repo.write("docs/plain.txt", "tracked, mode 644\n")
    repo.write("docs/becomes-link.txt", "tracked file\n")
    listing = f"{PY} {BIN}/list_tree.py {reports}/$LOOPENGINE_RUN_ID.json"
    for rel, task_id, reuse in (("tasks/demo/task.yaml", "demo", True),
                                ("tasks/demo/fresh.yaml", "demo-fresh", False)):
        task = default_task(isolation={"write": [str(reports)]},
                            id=task_id, mutator__command=listing,
                            runner__command=f"{PY} {BIN}/damage.py")
        task["sandbox"] = {"reuse": reuse}
        repo.write_task(task, rel=rel)
    repo.commit("messy")


def listing(reports: Path, result: Result) -> dict[str, Any]:
    return json.loads((reports / f"{result.record['run_id']}.json").read_text())


def test_a_reused_sandbox_looks_like_a_fresh_one(repo: Repo, reuse_guarded: Any,
                                                 isolated_env: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    messy_repo(repo, reports)
    fresh = listing(reports, reuse_guarded(task="tasks/demo/fresh.yaml"))
    assert fresh["git_is_dir"] and fresh["status"] == "0:"
    assert "build/out.o" not in fresh["entries"]  # the runner's mess is not there yet
    first = reuse_guarded()
    assert len(members(isolated_env)) == 1
    again = reuse_guarded()  # after the first run's runner left its mess in the member
    assert listing(reports, first) == fresh
    assert listing(reports, again) == fresh
    assert again.record["sandbox"] == "worktree"
    assert again.record["status"] != "keep"  # the mutator changes nothing

    # The baseline commit moves (a user's commit) and the tree has uncommitted changes.
    repo.write("README.md", "a project, committed again\n")
    repo.commit("user commit")
    repo.write("docs/plain.txt", "edited, not committed\n")
    repo.write("scratch.txt", "untracked, not ignored\n")
    fresh = listing(reports, reuse_guarded(task="tasks/demo/fresh.yaml"))
    assert "scratch.txt" in fresh["entries"]
    moved = reuse_guarded()
    steady = reuse_guarded()
    assert listing(reports, moved) == fresh
    assert listing(reports, steady) == fresh
    assert len(members(isolated_env)) == 1
    entries = listing(reports, steady)["entries"]
    assert entries["work"] == "dir" and not any(p.startswith("work/") for p in entries)


def test_reuse_keeps_climb_and_commit_like_fresh_runs(repo: Repo, reuse_guarded: Any,
                                                      isolated_env: Path) -> None:
    task = default_task()
    task["sandbox"] = {"reuse": True}
    repo.write_task(task)
    repo.commit("reuse")
    scores = [reuse_guarded().record for _ in range(3)]
    assert [r["status"] for r in scores] == ["keep"] * 3
    assert [r["candidate_score"] for r in scores] == [2.0, 3.0, 4.0]
    assert repo.read("tasks/demo/notes.md") == "first\nmore\nmore\nmore\n"
    assert repo.log()[:3] == ["loopengine(demo): keep 4.0", "loopengine(demo): keep 3.0",
                              "loopengine(demo): keep 2.0"]
    assert repo.git("status", "--porcelain") == ""
    member = members(isolated_env)
    assert len(member) == 1
    # The member is a registered worktree: `git worktree list` shows it.
    assert str((member[0] / "tree").resolve()) in worktree_paths(repo)


def test_concurrent_runs_each_get_their_own_member(repo: Repo, isolated_env: Path,
                                                   tmp_path: Path) -> None:
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    task = default_task(isolation={"write": [str(tmp_path)]},
                        mutator__command=f"{PY} {BIN}/barrier.py {arrived} 2 && "
                        f"{PY} {BIN}/append_line.py notes.md more")
    task["sandbox"] = {"reuse": True}
    repo.write_task(task)
    repo.commit("reuse")
    results: list[Result] = []
    runs = [threading.Thread(target=lambda: results.append(repo.run())) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert sorted(r.record["status"] for r in results) == ["discard", "keep"]
    trees = {Path(p.read_text()) for p in arrived.iterdir()}
    assert len(trees) == 2
    assert trees == {m / "tree" for m in members(isolated_env)}
    assert all(POOL in str(t) for t in trees)
    # A later run takes one of them again (the barrier counts the earlier arrival).
    next(arrived.iterdir()).unlink()
    assert repo.run().record["status"] == "keep"
    assert len(members(isolated_env)) == 2


def test_reuse_off_is_a_fresh_sandbox_and_drops_the_old_pool(repo: Repo, guarded: Any,
                                                             isolated_env: Path) -> None:
    assert guarded().record["status"] == "keep"  # no sandbox section: as before
    assert os.listdir(isolated_env) == []
    before = worktree_paths(repo)
    task = default_task()
    task["sandbox"] = {"reuse": True}
    repo.write_task(task)
    repo.commit("reuse on")
    assert repo.run().record["status"] == "keep"
    assert len(members(isolated_env)) == 1
    assert len(worktree_paths(repo)) == len(before) + 1
    task["sandbox"] = {"reuse": False}
    repo.write_task(task)
    repo.commit("reuse off")
    result = repo.run()
    assert check_record(repo, result)["status"] == "keep"
    assert os.listdir(isolated_env) == []
    assert worktree_paths(repo) == before


def test_keep_sandbox_never_hands_out_a_pool_member(repo: Repo, isolated_env: Path) -> None:
    task = default_task()
    task["sandbox"] = {"reuse": True}
    repo.write_task(task)
    repo.commit("reuse")
    result = repo.run("--keep-sandbox")
    assert result.record["status"] == "keep"
    kept = [p for p in os.listdir(isolated_env) if not p.startswith(POOL)]
    assert len(kept) == 1 and members(isolated_env) == []
    shutil.rmtree(isolated_env / kept[0])
    repo.git("worktree", "prune")


def test_a_member_that_cannot_be_reset_is_a_crash_and_is_replaced(
        repo: Repo, reuse_guarded: Any, isolated_env: Path) -> None:
    task = default_task()
    task["sandbox"] = {"reuse": True}
    repo.write_task(task)
    repo.commit("reuse")
    assert reuse_guarded().record["status"] == "keep"
    member = members(isolated_env)[0]
    admin = Path((member / "admin").read_text().strip())
    (admin / "index").write_bytes(b"DIRC but not an index")  # what no reset can read
    crashed = reuse_guarded().record
    assert crashed["status"] == "crash" and crashed["crash_kind"] == "sandbox"
    assert "could not be reset" in crashed["reason"]
    assert crashed["candidate_score"] is None and crashed["commit"] is None
    assert members(isolated_env) == [] and not admin.exists()
    assert repo.read("tasks/demo/notes.md") == "first\nmore\n"
    recovered = reuse_guarded().record
    assert recovered["status"] == "keep" and recovered["candidate_score"] == 3.0


def test_pool_drop_deletes_members_and_their_worktrees(repo: Repo, isolated_env: Path) -> None:
    before = worktree_paths(repo)
    task = default_task()
    task["sandbox"] = {"reuse": True}
    repo.write_task(task)
    repo.commit("reuse")
    assert repo.run().record["status"] == "keep"
    listed = subprocess.run([PY, "-m", "loopengine.pool", "list"], cwd=repo.path,
                            capture_output=True, text=True, check=True).stdout
    assert listed.startswith("demo\t")
    dropped = subprocess.run([PY, "-m", "loopengine.pool", "drop"], cwd=repo.path,
                             capture_output=True, text=True, check=True).stdout
    assert dropped == "demo: 1 deleted\n"
    assert os.listdir(isolated_env) == []
    assert worktree_paths(repo) == before


def test_a_run_that_stops_before_its_sandbox_hands_the_member_back(
        repo: Repo, reuse_guarded: Any, isolated_env: Path) -> None:
    task = default_task()
    task["sandbox"] = {"reuse": True}
    repo.write_task(task)
    repo.commit("reuse")
    assert reuse_guarded().record["status"] == "keep"
    (repo.path / ".git" / "MERGE_HEAD").write_text(repo.git("rev-parse", "HEAD"))
    stopped = reuse_guarded().record  # the member was being reset meanwhile
    assert stopped["status"] == "crash" and "middle of a merge" in stopped["reason"]
    (repo.path / ".git" / "MERGE_HEAD").unlink()
    assert reuse_guarded().record["candidate_score"] == 3.0
    assert len(members(isolated_env)) == 1  # the same member, not a second one
