"""The iteration's stages: the evaluate stage runs from data alone (a cluster ships it)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

from conftest import Repo, default_task

from loopengine import git
from loopengine import measure as measure_mod
from loopengine.diff import read_diff
from loopengine.iteration.common import EvalRequest
from loopengine.iteration.evaluate import evaluate_commit
from loopengine.task import load_task

NOTES = "tasks/demo/notes.md"


def test_evaluate_runs_from_a_commit_the_task_and_the_baseline(repo: Repo,
                                                               tmp_path: Path) -> None:
    repo.write_task(default_task(policy__repeats=2))
    repo.commit("two repeats")
    rec = repo.run("--candidates", "1").record  # a ref to evaluate
    assert rec["ref"]
    commit = repo.git("rev-parse", rec["ref"]).strip()
    start = repo.git("rev-parse", f"{commit}^^{{tree}}").strip()
    task = load_task(str(repo.path / "tasks/demo/task.yaml"), repo.path)
    ctx = git.repo_info(repo.path).ctx
    changes = tuple(read_diff(ctx, start, git.out(ctx, "rev-parse", f"{commit}^{{tree}}"))
                    .files)
    req = EvalRequest(run_id="20260101T000000000000Z-abcdef", task=task, start_tree=start,
                      tree=git.out(ctx, "rev-parse", f"{commit}^{{tree}}"), commit=commit,
                      changes=changes, frozen={NOTES: "x"}, plan=measure_mod.Plan("remeasured"),
                      seconds_left=60.0)
    # Small, frozen, picklable: what is sent to another process or machine.
    req = pickle.loads(pickle.dumps(req))
    before = repo.git("status", "--porcelain")
    t0 = time.monotonic()
    ev = evaluate_commit(req, repo.path, tmp_path / "logs")
    assert time.monotonic() - t0 < 60
    assert ev.crash is None, ev.crash
    assert ev.measured.candidate[:1] == [2.0]  # the candidate's two lines
    assert ev.measured.baseline[:1] == [1.0]  # its parent's one line
    ev = pickle.loads(pickle.dumps(ev))
    assert ev.score == 2.0
    assert repo.git("status", "--porcelain") == before  # the main tree untouched
    assert (tmp_path / "logs" / "runner.log").exists()
