#!/usr/bin/env python3
"""Someone else cancels the Ray task of an evaluation once, while its runner runs.

Usage: cancel_once.py REPO ADDRESS MARKER_DIR -- prints the WorkResult as JSON.
"""

import json
import sys
import time
from pathlib import Path

import ray

from loopengine import diff, git, measure, sandbox, sync
from loopengine.executors import remote
from loopengine.executors.ray import RayExecutor
from loopengine.iteration.common import EvalRequest
from loopengine.task import Executor, load_task

repo, address, markers = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
task = load_task(str(repo / "tasks/demo/task.yaml"), repo)
info = git.repo_info(repo)
run_id = "20260101T000000000000Z-cancel"
sb = sandbox.create(info, run_id, [])
try:
    with open(sb.tree / "tasks/demo/notes.md", "a") as fh:
        fh.write("more\n")
    cand = sandbox.snapshot(sb, "candidate")
    req = EvalRequest(run_id=run_id, task=task, start_tree=sb.start_tree, tree=cand,
                      commit=None, changes=diff.read_diff(sb.ctx, sb.start_tree, cand).files,
                      frozen=sync.artifact_state(sb.tree, task), plan=measure.Plan("none"),
                      seconds_left=120)
    work = remote.make_work(req, sb.ctx)
finally:
    sandbox.remove(sb, info)
executor = RayExecutor(Executor(kind="ray", address=address))
future = executor.submit(work)
while not list(markers.glob("*.json")):
    time.sleep(0.1)
ray.cancel(executor._jobs[id(future)].ref, force=True)  # not ours: someone else's
result = future.result(timeout=120)
print(json.dumps({"retried": result.retried, "crash": repr(result.evaluation.crash),
                  "candidate": result.evaluation.measured.candidate,
                  "markers": len(list(markers.glob("*.json")))}))
