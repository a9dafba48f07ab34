"""The main path: keep, climb, discard, with the guarantees checked after each run."""

from __future__ import annotations

from conftest import Repo


def test_first_run_keeps_without_baseline_and_commits(repo: Repo, guarded) -> None:
    result = guarded()
    rec = result.record
    assert result.code == 0
    assert rec["status"] == "keep"
    assert rec["reason"] == "no baseline available"
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
