"""The main path: keep, climb, discard, with the guarantees checked after each run."""

from __future__ import annotations

import subprocess

import pytest
from conftest import Repo


def test_first_run_measures_its_baseline_then_keeps_and_commits(repo: Repo, guarded) -> None:
    result = guarded()
    rec = result.record
    assert result.code == 0
    assert rec["status"] == "keep"
    assert rec["reason"] == ("score 2.0 beats baseline 1.0 by 1 (higher is better, "
                             "min_improvement 0)")
    assert (rec["baseline_source"], rec["baseline_score"], rec["runs"]) == ("remeasured", 1.0, 2)
    assert rec["candidate_score"] == 2.0
    assert rec["changed_files"] == ["tasks/demo/notes.md"]
    assert rec["diff_summary"] == "1 file changed, 1 insertion(+), 0 deletions(-)"
    assert repo.read("tasks/demo/notes.md") == "first\nmore\n"
    assert repo.log()[0] == "loopengine(demo): keep 2.0"
    assert repo.git("status", "--porcelain") == ""


def test_climbs_then_discards_when_not_better(repo: Repo, guarded) -> None:
    assert guarded().record["status"] == "keep"
    second = guarded().record
    assert second["status"] == "keep"
    assert second["baseline_score"] == 2.0 and second["candidate_score"] == 3.0
    repo.write_task(__import__("conftest").default_task(
        mutator__command="true"))
    repo.commit("no-op mutator")
    third = guarded().record
    assert third["status"] == "discard"
    assert third["reason"] == "candidate has no change"


def test_keep_sandbox_leaves_a_tree_git_can_inspect_and_remove(repo: Repo,
                                                                isolated_env) -> None:
    result = repo.run("--keep-sandbox", "-v")
    assert result.record["status"] == "keep"
    kept = [line.split("sandbox kept at ", 1)[1].strip()
            for line in result.stderr.splitlines() if "sandbox kept at " in line]
    assert len(kept) == 1
    tree = kept[0]
    # The candidate is there, and git in the kept tree sees it against HEAD.
    status = subprocess.run(["git", "-C", tree, "status", "--porcelain"], capture_output=True,
                            text=True, check=True).stdout
    assert "tasks/demo/notes.md" in status
    subprocess.run(["git", "-C", str(repo.path), "worktree", "remove", "--force", tree],
                   check=True, capture_output=True)
    assert repo.git("worktree", "list", "--porcelain").count("worktree ") == 1


@pytest.mark.parametrize(("name", "code"), [("INT", 130), ("TERM", 143)])
def test_a_signal_while_python_starts_still_gives_a_record(repo: Repo, name: str,
                                                           code: int) -> None:
    # The engine sends itself the signal while still importing, before its guard exists.
    result = repo.run(env={"LOOPENGINE_TEST_STARTUP_SIGNAL": name})
    assert result.code == code, result.stderr
    record = result.record
    assert record["status"] == "crash"
    assert record["crash_kind"] == "interrupted"
    assert repo.read("tasks/demo/notes.md") == "first\n"
    assert repo.results()[-1]["run_id"] == record["run_id"]
