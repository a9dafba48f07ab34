"""The first keep is measured (contract section 3, step 7; issue 10 point 1).

With no stored baseline -- a first run, an artifact the user edited, a stale fingerprint --
the main tree's artifacts are measured in the same iteration, before the candidate, and
the candidate is held against that.  Only an artifact that does not exist yet leaves
nothing to measure (then ``policy.keep_when_no_baseline`` decides), and a baseline whose
own evaluation fails is a crash that says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, assert_guarantees, default_task, snapshot

NOTES = "tasks/demo/notes.md"
STORE = "work/baselines/demo.json"


@pytest.fixture
def propose(repo: Repo, guarded: Any, tmp_path: Path) -> Any:
    plan = tmp_path / "proposal.md"
    state = tmp_path / "state"

    def setup(start: str | None, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "mutator__command": f"{PY} {BIN}/mutate.py copy {plan} notes.md",
            "scorer__command": f"{PY} {BIN}/noisy_score.py notes.md {state}",
            # The scorer keeps its state (and what it measured) where the test reads it.
            "isolation": {"write": [str(state)]},
        }
        settings.update(overrides)
        if start is not None:
            repo.write(NOTES, start)
        else:
            repo.git("rm", "-q", NOTES)
        repo.write_task(default_task(**settings))
        repo.commit("task")

    def run(text: str, code: int = 0) -> dict[str, Any]:
        plan.write_text(text)
        result = guarded()
        assert result.code == code, result.stderr
        return result.record

    def seen() -> list[str]:
        path = state / "seen"
        lines = path.read_text().split() if path.exists() else []
        path.unlink(missing_ok=True)
        return lines

    run.setup = setup  # type: ignore[attr-defined]
    run.seen = seen  # type: ignore[attr-defined]
    return run


def test_a_first_regression_is_measured_and_discarded(propose: Any, repo: Repo) -> None:
    # The case: a first patch that makes the artifact worse (3 -> 2) was kept
    # "no baseline available" and every later keep was measured from the regression.
    propose.setup("score: 3\n")
    head = repo.git("rev-parse", "HEAD")
    rec = propose("score: 2\n")
    assert rec["status"] == "discard"
    assert (rec["baseline_source"], rec["baseline_score"], rec["candidate_score"]) == (
        "remeasured", 3.0, 2.0)
    assert rec["baseline_scores"] == [3.0] and rec["runs"] == 2
    assert propose.seen() == ["3", "2"]  # the baseline first, then the candidate
    assert repo.git("rev-parse", "HEAD") == head and repo.read(NOTES) == "score: 3\n"
    # The measurement is the stored baseline now: the next run does not measure it again.
    stored = json.loads((repo.path / STORE).read_text())
    assert (stored["score"], stored["scores"]) == (3.0, [3.0])
    better = propose("score: 4\n")
    assert (better["status"], better["baseline_source"], better["runs"]) == (
        "keep", "stored", 1)
    assert propose.seen() == ["4"]


def test_a_first_improvement_is_kept_against_its_measured_baseline(propose: Any,
                                                                  repo: Repo) -> None:
    propose.setup("score: 3\n")
    rec = propose("score: 4\n")
    assert rec["status"] == "keep"
    assert rec["reason"] == ("score 4.0 beats baseline 3.0 by 1 (higher is better, "
                             "min_improvement 0)")
    assert rec["baseline_score"] == 3.0 and rec["baseline_source"] == "remeasured"
    assert repo.read(NOTES) == "score: 4\n"
    body = repo.git("log", "-1", "--format=%B")
    assert "Loopengine-Baseline: 3.0" in body


def test_the_first_baseline_with_repeats(propose: Any) -> None:
    propose.setup("score: 3\n", policy__repeats=3)
    rec = propose("score: 2\n")
    assert rec["status"] == "discard" and rec["baseline_source"] == "remeasured"
    # B before C: three baseline runs before the candidate's first.
    assert propose.seen()[:4] == ["3", "3", "3", "2"]
    assert rec["runs"] == len(rec["baseline_scores"]) + len(rec["candidate_scores"])


def test_a_failing_baseline_is_a_crash_that_says_so(propose: Any, repo: Repo,
                                                   isolated_env: Path) -> None:
    # The main tree's artifact has no score line: its own evaluation fails.
    propose.setup("no score here\n")
    before = snapshot(repo, isolated_env)
    rec = propose("score: 2\n", code=1)
    assert rec["status"] == "crash" and rec["crash_kind"] == "scorer"
    assert rec["reason"] == ("scorer exited with status 1 (the baseline's own evaluation "
                             "failed: the artifacts as they are in the main tree, measured "
                             "before the candidate)")
    assert rec["candidate_score"] is None and rec["runs"] == 1
    assert propose.seen() == []  # the candidate was never measured
    assert not (repo.path / STORE).exists()
    assert_guarantees(repo, before, isolated_env, rec)


def test_an_artifact_that_does_not_exist_yet_leaves_it_to_the_policy(propose: Any,
                                                                    repo: Repo) -> None:
    propose.setup(None)
    rec = propose("score: 2\n")
    assert (rec["status"], rec["reason"]) == ("keep", "no baseline available")
    assert rec["baseline_source"] == "none" and rec["baseline_score"] is None
    assert rec["runs"] == 1 and propose.seen() == ["2"]
    assert repo.read(NOTES) == "score: 2\n"
    # From now on there is something to measure.
    assert propose("score: 1\n")["status"] == "discard"


def test_with_a_glob_a_new_file_is_no_missing_artifact(propose: Any, repo: Repo) -> None:
    # notes.md matches the glob: the baseline exists and is measured, although the
    # candidate may add files the glob also matches.
    propose.setup("score: 3\n", artifacts__include=["*.md"])
    rec = propose("score: 1\n")
    assert rec["baseline_source"] == "remeasured" and rec["status"] == "discard"
