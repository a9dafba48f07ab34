"""Issue 3, point 6: a run killed with SIGKILL anywhere is recovered by the next run.

``LOOPENGINE_TEST_FAULT=<point>`` makes the engine SIGKILL itself at that point.  The next
run (here one with a missing task file, so that it does nothing but recover) finishes the
keep if the branch already holds it -- files, index entries, baseline, a ``keep`` record
-- and otherwise only removes the leftovers and appends a ``crash`` record.  Either way
the contract's guarantees hold afterwards, as after any run.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import Repo, assert_guarantees, default_task, snapshot

from loopengine import faults, recovery
from loopengine.results import Record

NOTES = "tasks/demo/notes.md"
# After these the branch holds the keep: rolled forward.  Before them: rolled back.
COMMITTED = {"after_ref_update", "after_file", "after_index", "after_sync", "after_baseline",
             "before_record"}
KEEP_POINTS = [p for p in faults.POINTS if not p.startswith("recovery_")]


def no_keep_leftovers(repo: Repo) -> None:
    """Nothing the keep prepared is left: no file beside an artifact, no index lock, no
    index of the engine's."""
    git_dir = repo.path / ".git"
    assert not (git_dir / "index.lock").exists()
    assert [p.name for p in git_dir.iterdir() if p.name.startswith("loopengine-")] == []
    notes = (repo.path / NOTES).parent
    assert [p.name for p in notes.iterdir() if ".loopengine-" in p.name] == []


def killed_at(repo: Repo, point: str) -> None:
    result = repo.run(env={faults.FAULT_VAR: point})
    assert result.code == -signal.SIGKILL, (result.code, result.stderr)
    assert result.stdout == ""


def recover(repo: Repo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the next run; (the killed run's record, the next run's record)."""
    nxt = repo.run(task="tasks/missing.yaml").record
    assert nxt["status"] == "crash" and nxt["crash_kind"] == "config"
    lost = [r for r in repo.results() if r["run_id"] != nxt["run_id"]]
    assert len(lost) == 1, lost  # exactly one record for the killed run
    saved = repo.path / "work" / "runs" / lost[0]["run_id"] / "record.json"
    assert json.loads(saved.read_text()) == lost[0]
    assert os.listdir(repo.path / "work" / "runs" / ".active") == []
    return lost[0], nxt


def baseline(repo: Repo) -> dict[str, Any] | None:
    path = repo.path / "work" / "baselines" / "demo.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("point", KEEP_POINTS)
def test_killed_at_each_point_then_recovered(repo: Repo, isolated_env: Path,
                                             point: str) -> None:
    before = snapshot(repo, isolated_env)
    head = before.head
    killed_at(repo, point)
    rec, nxt = recover(repo)
    assert_guarantees(repo, before, isolated_env, rec)
    no_keep_leftovers(repo)
    if point in COMMITTED:
        assert rec["status"] == "keep", rec
        assert rec["commit"] == repo.git("rev-parse", "HEAD").strip() != head
        assert rec["candidate_score"] == 2.0 and rec["changed_files"] == [NOTES]
        assert f"run {nxt['run_id']} finished it" in rec["reason"]
        assert repo.read(NOTES) == "first\nmore\n"
        assert repo.git("status", "--porcelain") == ""  # the index entry follows the keep
        stored = baseline(repo)
        assert stored is not None and stored["score"] == 2.0
        assert stored["run_id"] == rec["run_id"]
    else:
        assert rec["status"] == "crash" and rec["crash_kind"] == "interrupted", rec
        assert rec["commit"] is None
        assert repo.read(NOTES) == "first\n"
        assert baseline(repo) is None
    # The run after the recovery is an ordinary one, on top of whatever was kept.
    after = repo.run().record
    assert after["status"] == "keep"
    # Nothing stored after a rollback: the next run measures the baseline (1 line) first.
    assert after["baseline_score"] == (2.0 if point in COMMITTED else 1.0)


def test_a_keep_rolled_forward_leaves_an_artifact_the_user_changed_meanwhile(
        repo: Repo, isolated_env: Path) -> None:
    killed_at(repo, "after_ref_update")
    repo.write(NOTES, "the user's own words\n")
    rec, _ = recover(repo)
    assert rec["status"] == "keep" and rec["commit"]
    assert f"{NOTES} changed meanwhile and kept their content" in rec["reason"]
    assert repo.read(NOTES) == "the user's own words\n"
    assert repo.git("show", f"HEAD:{NOTES}") == "first\nmore\n"
    assert repo.git("status", "--porcelain") == f" M {NOTES}\n"
    assert os.listdir(isolated_env) == []


@pytest.mark.parametrize("point", ["after_temp", "after_ref_update", "after_file",
                                   "after_sync", "after_baseline"])
def test_a_keep_without_a_commit_is_rolled_forward_too(repo: Repo, isolated_env: Path,
                                                      point: str) -> None:
    repo.write_task(default_task(policy__commit_on_keep=False))
    repo.commit("no commits")
    before = snapshot(repo, isolated_env)
    killed_at(repo, point)
    rec, _ = recover(repo)
    assert_guarantees(repo, before, isolated_env, rec)
    no_keep_leftovers(repo)
    if point == "after_temp":  # before the commit point ("prepared"): nothing happened
        assert rec["status"] == "crash" and repo.read(NOTES) == "first\n"
        assert baseline(repo) is None
        return
    assert rec["status"] == "keep" and rec["commit"] is None
    assert repo.read(NOTES) == "first\nmore\n"
    assert baseline(repo)["score"] == 2.0  # type: ignore[index]


def test_a_record_lost_between_record_json_and_the_results_line_is_appended_once(
        repo: Repo) -> None:
    run_id = "20260101T000000000000Z-abcdef"
    folder = repo.path / "work" / "runs" / run_id
    folder.mkdir(parents=True)
    record = Record("demo", "discard", "candidate has no change", 1.0, "", run_id, 1.0, {},
                    [], 0, None, None, "worktree", "2026-01-01T00:00:00.000Z", 0.5, None, [],
                    None)
    (folder / "record.json").write_text(json.dumps(record.to_dict()))
    (folder / "meta.json").write_text(json.dumps({"task_id": "demo",
                                                  "results_path": "work/results.jsonl"}))
    active = repo.path / recovery.ACTIVE
    active.mkdir(parents=True)
    (active / run_id).touch()
    (repo.path / "work" / "results.jsonl").write_bytes(b'{"torn": tr')
    assert recovery.clean_leftovers(repo.path, "me") == [run_id]
    assert recovery.clean_leftovers(repo.path, "me") == []
    lines = (repo.path / "work" / "results.jsonl").read_bytes().splitlines()
    assert lines[0] == b'{"torn": tr'  # a torn line is ended, never merged into
    assert [json.loads(line) for line in lines[1:]] == [record.to_dict()]


def test_a_journal_that_cannot_be_finished_still_gives_one_crash_record(repo: Repo) -> None:
    run_id = "20260101T000000000000Z-fedcba"
    folder = repo.path / "work" / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "journal.jsonl").write_text('{"step": "intent", "record": {}}\n')
    active = repo.path / recovery.ACTIVE
    active.mkdir(parents=True)
    (active / run_id).touch()
    assert recovery.clean_leftovers(repo.path, "me") == [run_id]
    [rec] = repo.results()
    assert rec["run_id"] == run_id and rec["status"] == "crash"
    assert "its keep could not be finished (KeyError" in rec["reason"]
    assert recovery.clean_leftovers(repo.path, "me") == []
