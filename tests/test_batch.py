"""Batches (contract section 12): several candidates against one baseline, at most one keep."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from conftest import BIN, PY, Repo, assert_guarantees, default_task, snapshot

from loopengine.campaign.batch import corrected_confidence

NOTES = "tasks/demo/notes.md"
# The mutator of candidate i appends i + 1 lines: candidate i scores i + 2.
BY_INDEX = (f"{PY} -c \"import os; open('notes.md', 'a').write('x\\\\n' * "
            "(1 + int(os.environ['LOOPENGINE_CANDIDATE'])))\"")


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def batch_task(repo: Repo, **overrides: Any) -> None:
    repo.write_task(default_task(**{"mutator__command": BY_INDEX, "isolation": {"mode": "none"},
                                    **overrides}))
    repo.commit("batch task")


def test_candidates_one_keep_the_best_the_others_name_it(repo: Repo, isolated_env: Path) -> None:
    batch_task(repo)
    before = snapshot(repo, isolated_env)
    result = repo.run("--candidates", "3", "--jobs", "2")
    assert result.code == 0, result.stderr
    recs = records(result.stdout)
    assert [r["run_id"] for r in recs] == sorted(r["run_id"] for r in recs)
    assert len({r["run_id"] for r in recs}) == 3
    assert len({r["batch_id"] for r in recs}) == 1 and recs[0]["batch_id"] is not None
    assert [r["status"] for r in recs] == ["discard", "discard", "keep"]
    best = recs[2]
    assert best["candidate_score"] == 4.0 and best["commit"]
    for r in recs[:2]:
        assert f"lost to run {best['run_id']}" in r["reason"]
        assert r["commit"] is None
    # One baseline for all: measured once, before the candidates.
    assert {r["baseline_score"] for r in recs} == {1.0}
    assert repo.read(NOTES) == "first\nx\nx\nx\n"
    assert repo.log()[0] == "loopengine(demo): keep 4.0"
    # The records are in results.jsonl too, each with its own ref.
    stored = [r for r in repo.results() if r.get("batch_id") == best["batch_id"]]
    assert [r["run_id"] for r in stored] == [r["run_id"] for r in recs]
    for r in recs:
        assert r["ref"] == f"refs/loopengine/demo/{r['run_id']}"
        status = repo.git("log", "-1", "--format=%(trailers:key=Loopengine-Status,valueonly)",
                          r["ref"]).strip()
        assert status == r["status"]
    assert_guarantees(repo, before, isolated_env, best, batch=recs)


def test_a_race_inside_a_batch_the_better_one_wins(repo: Repo, tmp_path: Path) -> None:
    """Both candidates are in flight at once and the worse one finishes first: as two
    `run` calls, the better one would lose ("baseline changed during run")."""
    gate = tmp_path / "gate"
    gate.mkdir()
    slow_best = (f"{PY} -c \"import os, time; "
                 "time.sleep(1.5 if os.environ['LOOPENGINE_CANDIDATE'] == '1' else 0)\"")
    batch_task(repo, mutator__command=f"{PY} {BIN}/barrier.py {gate} 2 && {BY_INDEX}",
               runner__command=slow_best)
    result = repo.run("--candidates", "2", "--jobs", "2")
    assert result.code == 0, result.stderr
    worse, better = records(result.stdout)
    assert better["status"] == "keep" and better["candidate_score"] == 3.0
    assert worse["status"] == "discard"
    assert f"lost to run {better['run_id']}" in worse["reason"]
    assert "baseline changed" not in better["reason"]
    assert len(os.listdir(gate)) == 2  # both mutators ran at the same time


def test_patches_a_batch_with_a_stale_patch_rebased(repo: Repo, tmp_path: Path) -> None:
    repo.write("tasks/demo/notes.md", "one\ntwo\nthree\nfour\nfive\n")
    repo.write_task(default_task(mutator__command="true", isolation={"mode": "none"},
                                 mutation__max_changed_lines=20))
    repo.commit("five lines")
    # A patch made now, and the artifact moves on (a keep by someone else) before the batch.
    repo.write(NOTES, "one\ntwo\nthree\nfour\nfive\nsix\n")
    old = tmp_path / "old.diff"
    old.write_text(repo.git("diff"))
    repo.git("checkout", "--", NOTES)
    repo.write(NOTES, "zero\none\ntwo\nthree\nfour\nfive\n")
    repo.commit("a line on top")
    repo.write(NOTES, "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\n")
    fresh = tmp_path / "fresh.diff"
    fresh.write_text(repo.git("diff"))
    repo.git("checkout", "--", NOTES)
    result = repo.run("--patch", str(old), "--patch", str(fresh))
    assert result.code == 0, result.stderr
    first, second = records(result.stdout)
    assert first["status"] == "discard" and first["candidate_score"] == 7.0  # rebased
    assert second["status"] == "keep" and second["candidate_score"] == 8.0
    assert f"lost to run {second['run_id']}" in first["reason"]
    assert repo.read(NOTES) == "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\n"


def test_the_baseline_is_measured_once_for_the_batch(repo: Repo, tmp_path: Path) -> None:
    count = tmp_path / "runner-calls"
    batch_task(repo, runner__command=f"echo x >> {count}",
               policy__remeasure_baseline=True)
    result = repo.run("--candidates", "4", "--jobs", "2")
    assert result.code == 0, result.stderr
    recs = records(result.stdout)
    assert len(recs) == 4
    # Four candidates and one baseline: five runner calls, not eight.
    assert len(count.read_text().splitlines()) == 5
    assert {tuple(r["baseline_scores"]) for r in recs} == {(1.0,)}


def test_exit_status_is_1_only_when_every_candidate_crashed(repo: Repo) -> None:
    crash_odd = (f"{PY} -c \"import os, sys; "
                 "sys.exit(int(os.environ['LOOPENGINE_CANDIDATE']) % 2)\"")
    batch_task(repo, runner__command=crash_odd)
    result = repo.run("--candidates", "2")
    assert result.code == 0, result.stderr
    assert [r["status"] for r in records(result.stdout)] == ["keep", "crash"]
    batch_task(repo, runner__command="exit 3")
    result = repo.run("--candidates", "2")
    assert result.code == 1
    assert [r["status"] for r in records(result.stdout)] == ["crash", "crash"]


def test_the_confidence_is_corrected_for_the_number_compared(repo: Repo) -> None:
    assert corrected_confidence(0.95, 1) == 0.95
    assert abs(corrected_confidence(0.95, 5) - 0.99) < 1e-12
    batch_task(repo)
    best = records(repo.run("--candidates", "2").stdout)[1]
    assert best["status"] == "keep"
    assert "confidence corrected to 0.975" in best["reason"]


def test_a_single_candidate_is_no_batch(repo: Repo) -> None:
    rec = repo.run("--candidates", "1").record
    assert rec["batch_id"] is None and rec["status"] == "keep"


def test_batch_options_that_do_not_go_together(repo: Repo, tmp_path: Path) -> None:
    patch = tmp_path / "p.diff"
    patch.write_text("")
    result = repo.run("--candidates", "2", "--patch", str(patch))
    assert result.code == 2 and result.stdout == ""
    result = repo.run("--candidates", "2", "--keep-sandbox")
    assert result.code == 2 and result.stdout == ""


def test_sigterm_stops_every_candidate_and_each_writes_its_record(
        repo: Repo, isolated_env: Path, procs: list[Any]) -> None:
    import signal
    import subprocess
    import time

    # The batch's baseline measurement is quick; the candidates' runners are not.
    batch_task(repo, runner__command='test -z "$LOOPENGINE_CANDIDATE" || sleep 60')
    proc = subprocess.Popen([PY, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml",
                             "--candidates", "2", "--jobs", "2"], cwd=repo.path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    deadline = time.monotonic() + 60
    runs = repo.path / "work" / "runs"
    while len(list(runs.glob("*/runner.log"))) < 3:  # the baseline's and both candidates'
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    recs = records(out)
    assert [r["status"] for r in recs] == ["crash", "crash"]
    assert all(r["crash_kind"] == "interrupted" for r in recs)
    assert "SIGTERM" in recs[0]["reason"]
    assert os.listdir(isolated_env) == []
    assert repo.git("worktree", "list").count("\n") == 1
