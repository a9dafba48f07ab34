"""Records an agent can act on without opening a file: crash_kind, violations, log_tail."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Repo, default_task

RULE_KEYS = {"rule", "path", "limit", "actual"}


def outcome(repo: Repo, **overrides: Any) -> dict[str, Any]:
    repo.write_task(default_task(**overrides))
    if repo.git("status", "--porcelain"):
        repo.commit("task")
    result = repo.run()
    rec = result.record
    assert result.code == (1 if rec["status"] == "crash" else 0)
    return rec


def next_move(rec: dict[str, Any]) -> str:
    """What an agent decides from the record alone (the guide's advice, as code)."""
    if rec["status"] == "keep":
        return "build on it"
    if rec["status"] == "discard":
        rules = {v["rule"] for v in rec["violations"]}
        return f"respect {sorted(rules)}" if rules else "try another idea"
    if rec["crash_kind"] == "config":
        return "fix the task file"
    if rec["crash_kind"] in ("mutator", "runner", "scorer"):
        return f"read the {rec['crash_kind']}'s log_tail: {rec['log_tail'].splitlines()[-1]}"
    return f"fix {rec['crash_kind']}"


@pytest.mark.parametrize(("overrides", "move"), [
    ({}, "build on it"),
    ({"mutator__command": "echo trying >&2; echo 'cannot parse notes.md' >&2; exit 2"},
     "read the mutator's log_tail: cannot parse notes.md"),
    ({"runner__command": "echo 'model diverged at step 7'; exit 1"},
     "read the runner's log_tail: model diverged at step 7"),
    ({"scorer__command": "echo 'score: 3'"}, "read the scorer's log_tail: score: 3"),
    ({"runner__command": "echo still going; sleep 30", "runner__timeout_seconds": 0.5},
     "fix timeout"),
    ({"runner__timeout_secs": 5}, "fix the task file"),
    ({"mutator__command": "echo x >> ../../README.md"}, "respect ['not_an_artifact']"),
    ({"mutator__command": "printf 'a\\nb\\nc\\n' >> notes.md", "mutation__max_changed_lines": 2},
     "respect ['max_changed_lines']"),
])
def test_the_record_alone_says_what_to_do_next(repo: Repo, overrides: dict[str, Any],
                                               move: str) -> None:
    rec = outcome(repo, **overrides)
    assert next_move(rec) == move, rec


def test_crash_fields_are_there_exactly_for_crashes(repo: Repo) -> None:
    keep = outcome(repo)
    assert (keep["crash_kind"], keep["violations"], keep["log_tail"]) == (None, [], None)
    discard = outcome(repo, mutator__command="echo x >> ../../README.md")
    assert discard["crash_kind"] is None and discard["log_tail"] is None
    assert [set(v) for v in discard["violations"]] == [RULE_KEYS]
    crash = outcome(repo, runner__command="exit 5")
    assert crash["crash_kind"] == "runner" and crash["violations"] == []
    assert crash["log_tail"] == ""  # the runner printed nothing: an empty tail, not null


def test_a_config_crash_names_the_field_and_has_no_tail(repo: Repo) -> None:
    rec = outcome(repo, runner__timeout_secs=5)
    assert rec["crash_kind"] == "config" and rec["log_tail"] is None
    assert "runner.timeout_secs: unknown key" in rec["reason"]


def test_violations_carry_limit_and_actual(repo: Repo) -> None:
    rec = outcome(repo, mutator__command="printf 'a\\nb\\nc\\n' >> notes.md",
                  mutation__max_changed_lines=2)
    assert rec["violations"] == [{"rule": "max_changed_lines", "path": None, "limit": 2,
                                  "actual": 3}]
    assert rec["candidate_score"] is None  # never scored


def test_log_tail_is_bounded_in_lines_and_bytes(repo: Repo) -> None:
    rec = outcome(repo, runner__command="for i in $(seq 1 300); do printf '%0200d\\n' $i; done;"
                                        " exit 1")
    tail = rec["log_tail"]
    assert len(tail.encode()) <= 4096
    assert len(tail.splitlines()) <= 40
    assert tail.splitlines()[-1] == f"{300:0200d}"
