"""Decisions (contract section 3 step 7): objective, min_improvement, constraints, baseline.

The artifact ``tasks/demo/notes.md`` holds ``key: number`` lines; the scorer reads
``score`` and the metrics from it, so the score belongs to the artifact's content.  The
mutator copies a proposal written outside the repository over the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, assert_guarantees, default_task, snapshot

NOTES = "tasks/demo/notes.md"
STORE = "work/baselines/demo.json"


class Bench:
    """Propose an artifact content, run one iteration under the guarantees, get the record."""

    def __init__(self, repo: Repo, guarded: Any, tmp_path: Path) -> None:
        self.repo = repo
        self.guarded = guarded
        self.plan = tmp_path / "proposal.md"

    def setup(self, start: str, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "mutator__command": f"{PY} {BIN}/mutate.py copy {self.plan} notes.md",
            "scorer__command": f"{PY} {BIN}/score_kv.py notes.md",
        }
        settings.update(overrides)
        self.repo.write(NOTES, start)
        self.repo.write_task(default_task(**settings))
        self.repo.commit("task")

    def propose(self, text: str, code: int = 0) -> dict[str, Any]:
        self.plan.write_text(text)
        result = self.guarded()
        assert result.code == code, result.stderr
        rec = result.record
        assert self.repo.results()[-1] == rec
        # Shown by pytest when a test fails: the run's story so far.
        print(rec["status"], rec["candidate_score"], rec["baseline_score"], rec["reason"])
        return rec


@pytest.fixture
def bench(repo: Repo, guarded: Any, tmp_path: Path) -> Bench:
    return Bench(repo, guarded, tmp_path)


def commits(repo: Repo) -> int:
    return int(repo.git("rev-list", "--count", "HEAD"))


def stored_score(repo: Repo) -> float | None:
    path = repo.path / STORE
    return json.loads(path.read_text())["score"] if path.exists() else None


# ---------------------------------------------------------------------------
# The objective


def test_maximize(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\n")
    # The first run measures the baseline (the main tree's artifacts) before it compares.
    first = bench.propose("score: 1\n")
    assert (first["status"], first["reason"]) == ("discard", "candidate has no change")
    assert first["candidate_score"] == 1.0 and first["baseline_score"] == 1.0
    assert first["baseline_source"] == "remeasured" and stored_score(repo) == 1.0

    better = bench.propose("score: 2\n")
    assert better["status"] == "keep"
    assert (better["baseline_score"], better["candidate_score"]) == (1.0, 2.0)
    assert better["reason"] == ("score 2.0 beats baseline 1.0 by 1 "
                                "(higher is better, min_improvement 0)")
    assert better["commit"] and repo.read(NOTES) == "score: 2\n"

    store = (repo.path / STORE).read_bytes()
    worse = bench.propose("score: 1.5\n")
    assert worse["status"] == "discard"
    assert (worse["baseline_score"], worse["candidate_score"]) == (2.0, 1.5)
    assert worse["reason"] == ("score 1.5 does not beat baseline 2.0 by more than "
                               "min_improvement 0 (higher is better)")
    assert worse["commit"] is None and worse["violations"] == []

    # A different text with an equal score is not an improvement.
    equal = bench.propose("score: 2.0\n")
    assert equal["status"] == "discard" and equal["candidate_score"] == 2.0
    assert repo.read(NOTES) == "score: 2\n"
    # Discards leave the baseline where it was.
    assert (repo.path / STORE).read_bytes() == store


def test_minimize(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 5\n", objective__direction="minimize")
    assert bench.propose("score: 5\n")["status"] == "discard"  # measures the baseline
    higher = bench.propose("score: 6\n")
    assert higher["status"] == "discard"
    assert higher["reason"] == ("score 6.0 does not beat baseline 5.0 by more than "
                                "min_improvement 0 (lower is better)")
    lower = bench.propose("score: 4\n")
    assert lower["status"] == "keep"
    assert lower["reason"] == ("score 4.0 beats baseline 5.0 by 1 "
                               "(lower is better, min_improvement 0)")
    assert repo.read(NOTES) == "score: 4\n"
    assert stored_score(repo) == 4.0


@pytest.mark.parametrize(
    ("direction", "base", "equal", "above"),
    [("maximize", "1", "1.5", "1.6"), ("minimize", "1", "0.5", "0.4")],
)
def test_min_improvement(bench: Bench, repo: Repo, direction: str, base: str, equal: str,
                         above: str) -> None:
    bench.setup(f"score: {base}\n", objective__direction=direction,
                policy__min_improvement=0.5)
    assert bench.propose(f"score: {base}\n")["baseline_score"] == float(base)
    # Exactly min_improvement better: not "more than", so a discard.
    at = bench.propose(f"score: {equal}\n")
    assert at["status"] == "discard", at["reason"]
    assert "min_improvement 0.5" in at["reason"]
    beyond = bench.propose(f"score: {above}\n")
    assert beyond["status"] == "keep", beyond["reason"]
    assert beyond["baseline_score"] == float(base)
    assert repo.read(NOTES) == f"score: {above}\n"


# ---------------------------------------------------------------------------
# Constraints


def test_max_constraint(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\nlatency: 40\n", constraints=[{"metric": "latency", "max": 50}])
    assert bench.propose("score: 1\nlatency: 40\n")["baseline_score"] == 1.0
    slow = bench.propose("score: 9\nlatency: 60\n")
    assert slow["status"] == "discard"
    assert slow["violations"] == [
        {"rule": "constraint.max", "path": "latency", "limit": 50.0, "actual": 60.0}]
    assert slow["reason"] == "constraint violated: latency = 60.0 > max 50.0"
    assert slow["candidate_score"] == 9.0 and slow["metrics"] == {"latency": 60.0}
    assert repo.read(NOTES) == "score: 1\nlatency: 40\n"
    # The bound itself is allowed.
    at_bound = bench.propose("score: 2\nlatency: 50\n")
    assert at_bound["status"] == "keep" and at_bound["violations"] == []
    assert at_bound["metrics"] == {"latency": 50.0}


def test_min_constraint_and_several_violations(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\nrecall: 0.9\nlatency: 1\n", constraints=[
        {"metric": "recall", "min": 0.5}, {"metric": "latency", "max": 10}])
    assert bench.propose("score: 1\nrecall: 0.9\nlatency: 1\n")["baseline_score"] == 1.0
    low = bench.propose("score: 2\nrecall: 0.4\nlatency: 1\n")
    assert low["status"] == "discard"
    assert low["violations"] == [
        {"rule": "constraint.min", "path": "recall", "limit": 0.5, "actual": 0.4}]
    assert low["reason"] == "constraint violated: recall = 0.4 < min 0.5"
    both = bench.propose("score: 2\nrecall: 0.4\nlatency: 11\n")
    assert [v["rule"] for v in both["violations"]] == ["constraint.min", "constraint.max"]
    assert both["reason"].endswith("(and 1 more)")
    assert repo.read(NOTES) == "score: 1\nrecall: 0.9\nlatency: 1\n"


def test_missing_constraint_metric_is_a_scorer_crash(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\n", constraints=[{"metric": "latency", "max": 50}])
    rec = bench.propose("score: 2\n", code=1)
    assert rec["status"] == "crash"
    assert rec["crash_kind"] == "scorer"
    assert "latency" in rec["reason"] and "missing" in rec["reason"]
    assert rec["commit"] is None
    assert repo.read(NOTES) == "score: 1\n"
    assert stored_score(repo) is None


# ---------------------------------------------------------------------------
# The baseline


def test_no_change_with_a_baseline_is_a_discard(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\n")
    bench.propose("score: 1\n")
    bench.propose("score: 2\n")
    head = repo.git("rev-parse", "HEAD")
    same = bench.propose("score: 2\n")
    assert same["status"] == "discard"
    assert same["reason"] == "candidate has no change"
    assert same["changed_files"] == [] and same["diff_summary"] == ""
    assert same["changed_lines"] == 0 and same["patch"] is None
    assert same["baseline_score"] == 2.0
    assert repo.git("rev-parse", "HEAD") == head


def test_no_baseline_and_no_change_sets_the_baseline(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 3\n")
    n = commits(repo)
    first = bench.propose("score: 3\n")
    assert first["status"] == "discard"
    assert first["reason"] == "candidate has no change"
    assert first["candidate_score"] == first["baseline_score"] == 3.0
    assert first["baseline_source"] == "remeasured" and first["runs"] == 1
    assert first["commit"] is None and first["patch"] is None
    assert first["changed_files"] == [] and first["diff_summary"] == ""
    assert commits(repo) == n
    assert stored_score(repo) == 3.0
    second = bench.propose("score: 4\n")
    assert second["status"] == "keep"
    assert second["baseline_score"] == 3.0
    assert commits(repo) == n + 1


def test_keep_when_no_baseline_decides_nothing_when_the_artifact_exists(
        bench: Bench, repo: Repo) -> None:
    # The first candidate is measured against the main tree's artifacts, whatever the
    # policy says: a regression is never kept "against nothing".
    bench.setup("score: 3\n", policy__keep_when_no_baseline=True)
    worse = bench.propose("score: 2\n")
    assert worse["status"] == "discard" and worse["baseline_source"] == "remeasured"
    assert (worse["baseline_score"], worse["candidate_score"]) == (3.0, 2.0)
    assert worse["reason"] == ("score 2.0 does not beat baseline 3.0 by more than "
                               "min_improvement 0 (higher is better)")
    assert repo.read(NOTES) == "score: 3\n" and stored_score(repo) == 3.0
    assert bench.propose("score: 4\n")["baseline_source"] == "stored"


@pytest.mark.parametrize("keep", [True, False])
def test_keep_when_no_baseline_decides_when_the_artifact_does_not_exist_yet(
        bench: Bench, repo: Repo, keep: bool) -> None:
    bench.setup("score: 1\n", policy__keep_when_no_baseline=keep)
    repo.git("rm", "-q", NOTES)
    repo.commit("no notes yet")
    n = commits(repo)
    first = bench.propose("score: 5\n")
    assert first["baseline_source"] == "none" and first["baseline_score"] is None
    assert first["candidate_score"] == 5.0 and first["runs"] == 1
    if keep:
        assert (first["status"], first["reason"]) == ("keep", "no baseline available")
        assert repo.read(NOTES) == "score: 5\n" and commits(repo) == n + 1
        assert stored_score(repo) == 5.0
    else:
        assert first["status"] == "discard"
        assert first["reason"] == ("no baseline available and "
                                   "policy.keep_when_no_baseline is false")
        assert not (repo.path / NOTES).exists() and commits(repo) == n
        assert stored_score(repo) is None


def test_baseline_belongs_to_the_artifact_content(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\n")
    bench.propose("score: 1\n")
    assert bench.propose("score: 2\n")["status"] == "keep"
    # The user edits the artifact by hand: the stored score no longer describes it, so
    # the artifact as it is now is measured, and the candidate is held against that.
    repo.write(NOTES, "score: 10\n")
    rec = bench.propose("score: 3\n")
    assert (rec["baseline_score"], rec["baseline_source"]) == (10.0, "remeasured")
    assert rec["status"] == "discard"
    assert repo.read(NOTES) == "score: 10\n"
    assert stored_score(repo) == 10.0
    # The same for an edit the user commits.
    repo.write(NOTES, "score: 20\n")
    repo.commit("by hand")
    rec = bench.propose("score: 30\n")
    assert (rec["baseline_score"], rec["status"]) == (20.0, "keep")
    assert stored_score(repo) == 30.0


def test_baseline_is_used_again_when_the_content_comes_back(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\n")
    bench.propose("score: 1\n")
    repo.write(NOTES, "score: 10\n")
    repo.write(NOTES, "score: 1\n")  # rewritten: a new mtime, the content measured
    rec = bench.propose("score: 0.5\n")
    assert rec["baseline_score"] == 1.0
    assert rec["status"] == "discard"


def test_baseline_store_lives_under_work(bench: Bench, repo: Repo) -> None:
    bench.setup("score: 1\n")
    first = bench.propose("score: 1\n")
    second = bench.propose("score: 2\n")
    data = json.loads((repo.path / STORE).read_text())
    assert data["score"] == 2.0
    assert data["run_id"] == second["run_id"] != first["run_id"]
    # Runtime state: not in the user's status, not in any commit.
    assert repo.git("status", "--porcelain") == ""
    assert "work/" not in repo.git("log", "--all", "--name-only", "--format=")
    # Without the store, the same content has no baseline any more.
    (repo.path / STORE).unlink()
    again = bench.propose("score: 3\n")
    assert (again["baseline_source"], again["baseline_score"]) == ("remeasured", 2.0)
    assert again["status"] == "keep"


# ---------------------------------------------------------------------------
# What changed while the iteration ran


def test_artifact_changed_after_validation(bench: Bench, repo: Repo) -> None:
    # The runner edits the validated artifact: what was scored is not what was checked.
    bench.setup("score: 1\n", runner__command=f"{PY} {BIN}/mutate.py write notes.md "
                "'score: 100\\n'")
    rec = bench.propose("score: 2\n")
    assert rec["status"] == "discard"
    assert rec["reason"].startswith("an artifact changed after validation")
    assert rec["commit"] is None
    assert repo.read(NOTES) == "score: 1\n"
    assert stored_score(repo) is None


def test_main_tree_artifact_changed_during_the_run(
    repo: Repo, tmp_path: Path, isolated_env: Path
) -> None:
    main_notes = repo.path / NOTES
    repo.write(NOTES, "score: 1\n")
    plan = tmp_path / "proposal.md"
    plan.write_text("score: 2\n")
    repo.write_task(default_task(isolation={"mode": "none"},
        mutator__command=f"{PY} {BIN}/mutate.py copy {plan} notes.md",
        runner__command=f"{PY} {BIN}/mutate.py write {main_notes} 'score: 7\\n'",
        scorer__command=f"{PY} {BIN}/score_kv.py notes.md"))
    repo.commit("task")
    before = snapshot(repo, isolated_env)
    result = repo.run()
    rec = result.record
    assert result.code == 0
    assert rec["status"] == "discard"
    assert rec["reason"] == "the main tree's artifacts changed while the iteration ran"
    assert rec["commit"] is None
    # The user's edit is theirs: untouched, and no baseline recorded for anything.
    assert main_notes.read_text() == "score: 7\n"
    assert stored_score(repo) is None
    main_notes.write_text("score: 1\n")
    assert_guarantees(repo, before, isolated_env, rec)

