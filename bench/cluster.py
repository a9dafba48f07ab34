"""Candidates on a Ray cluster: throughput on one node against two, and Ray's overhead.

    uv run python bench/cluster.py              # ~3-5 minutes on 2 CPUs
    uv run python bench/cluster.py --runner 2 --candidates 8 --rounds 1

Starts a real local Ray cluster (tests/ray_cluster.py: a head node and then a worker node,
one CPU each, as separate process groups) and prints:

1. throughput: a batch of N candidates (``run --candidates N --jobs N``) whose runner
   sleeps S seconds, on one node and then on two; candidates per minute and the ratio
   (2.0 is perfect scaling; the runners sleep, so the two cores are not the limit);
2. overhead: the same batch with a runner that does nothing, ``executor: local`` against
   ``executor: ray`` on one node, per candidate; and, in-process, one evaluation submitted
   to the local executor (a thread pool) against the Ray executor, per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from ray_cluster import LocalCluster  # noqa: E402

PY = sys.executable


def make_repo(root: Path, runner_seconds: float, kind: str, address: str) -> Path:
    repo = root / f"repo-{kind}-{runner_seconds:g}-{time.monotonic_ns()}"
    (repo / "tasks/demo").mkdir(parents=True)
    (repo / ".gitignore").write_text("/work/\n")
    (repo / "tasks/demo/notes.md").write_text("first\n")
    runner = f"sleep {runner_seconds:g}" if runner_seconds else "true"
    task: dict[str, Any] = {
        "id": "demo", "description": "bench",
        "artifacts": {"include": ["notes.md"], "max_files_per_iteration": 1},
        "mutation": {"max_changed_lines": 10, "allowed_file_types": [".md"]},
        "mutator": {"type": "command", "cwd": "tasks/demo", "timeout_seconds": 30,
                    "command": "echo \"idea $LOOPENGINE_CANDIDATE\" >> notes.md"},
        "runner": {"command": runner, "cwd": "tasks/demo", "timeout_seconds": 60},
        "scorer": {"type": "command", "cwd": "tasks/demo", "timeout_seconds": 30,
                   "command": "echo \"{\\\"score\\\": $(wc -l < notes.md)}\"",
                   "parse": {"format": "json", "score_field": "score"}},
        "objective": {"direction": "maximize"}, "constraints": [],
        "policy": {"min_improvement": 0.0, "keep_when_no_baseline": True,
                   "commit_on_keep": True},
        "budget": {"max_seconds": 600},
        "logging": {"results_path": "work/results.jsonl"},
        "executor": {"kind": kind, "address": address,
                     "resources": {"num_cpus": 1, "num_gpus": 0}},
    }
    (repo / "tasks/demo/task.yaml").write_text(yaml.safe_dump(task))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    return repo


def loopengine(repo: Path, *args: str) -> tuple[float, list[dict[str, Any]]]:
    t0 = time.monotonic()
    proc = subprocess.run([PY, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml",
                           *args], cwd=repo, capture_output=True, text=True, check=False)
    took = time.monotonic() - t0
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if not records or any(r["status"] == "crash" for r in records):
        raise SystemExit(f"a run failed: {proc.stdout}\n{proc.stderr}")
    return took, records


def batch(repo: Path, n: int) -> float:
    """Seconds for a batch of ``n`` candidates, the baseline stored beforehand."""
    loopengine(repo)  # stores a baseline: the batch then measures candidates only
    took, records = loopengine(repo, "--candidates", str(n), "--jobs", str(n))
    assert len(records) == n
    return took


def in_process_overhead(address: str, calls: int) -> tuple[float, float]:
    """Median seconds of one submit -> result, local thread pool against Ray."""
    from loopengine import diff, git, measure, sandbox, sync
    from loopengine.executors import local, remote
    from loopengine.executors import ray as ray_executor
    from loopengine.iteration.common import EvalRequest
    from loopengine.task import Executor, load_task

    root = Path(tempfile.mkdtemp(prefix="lr-bench-"))
    repo = make_repo(root, 0, "local", "auto")
    task = load_task(str(repo / "tasks/demo/task.yaml"), repo)
    info = git.repo_info(repo)
    sb = sandbox.create(info, "20260101T000000000000Z-000000", [])
    try:
        with open(sb.tree / "tasks/demo/notes.md", "a") as fh:
            fh.write("more\n")
        cand = sandbox.snapshot(sb, "candidate")
        req = EvalRequest(run_id="20260101T000000000000Z-000000", task=task,
                          start_tree=sb.start_tree, tree=cand, commit=None,
                          changes=diff.read_diff(sb.ctx, sb.start_tree, cand).files,
                          frozen=sync.artifact_state(sb.tree, task),
                          plan=measure.Plan("none"), seconds_left=60)
        work = remote.make_work(req, sb.ctx)
    finally:
        sandbox.remove(sb, info)
    executors = {"local": local.LocalExecutor(1),
                 "ray": ray_executor.RayExecutor(Executor(kind="ray", address=address))}
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(calls):
        for name, ex in executors.items():  # interleaved: drift hits both alike
            t0 = time.monotonic()
            result = ex.submit(work).result()
            times[name].append(time.monotonic() - t0)
            assert result.evaluation.crash is None, result
    for ex in executors.values():
        ex.shutdown()
    return statistics.median(times["local"]), statistics.median(times["ray"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--runner", type=float, default=2.0, help="runner seconds")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--calls", type=int, default=10, help="in-process submits")
    args = parser.parse_args()
    n = args.candidates
    root = Path(tempfile.mkdtemp(prefix="lr-bench-"))
    print(f"load at start: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    with LocalCluster(num_cpus=1) as cluster:
        one, two, local_t, ray_t = [], [], [], []
        for _ in range(args.rounds):
            local_t.append(batch(make_repo(root, 0, "local", "auto"), n))
            ray_t.append(batch(make_repo(root, 0, "ray", cluster.address), n))
            one.append(batch(make_repo(root, args.runner, "ray", cluster.address), n))
        cluster.add_worker()
        for _ in range(args.rounds):
            two.append(batch(make_repo(root, args.runner, "ray", cluster.address), n))
        local_call, ray_call = in_process_overhead(cluster.address, args.calls)
    t1, t2 = statistics.median(one), statistics.median(two)
    tl, tr = statistics.median(local_t), statistics.median(ray_t)
    print(f"batch of {n} candidates, runner {args.runner:g}s, --jobs {n}, "
          f"median of {args.rounds} round(s); load at end {os.getloadavg()[0]:.1f}")
    print(f"  one node : {t1:6.1f} s  {60 * n / t1:5.1f} candidates/min")
    print(f"  two nodes: {t2:6.1f} s  {60 * n / t2:5.1f} candidates/min")
    print(f"  throughput ratio two/one: {t1 / t2:.2f}x (2.00x is perfect scaling)")
    # The batch's fixed cost (start-up, 8 sandboxes, joining the cluster, the keep) is the
    # same on one node and two: without it, what the second node adds to the measuring.
    if t2 > tr:
        print(f"  net of the batch's fixed cost ({tr:.1f} s, the same batch with a runner "
              f"that does nothing): {(t1 - tr) / (t2 - tr):.2f}x")
    print(f"overhead, batch of {n} with a runner that does nothing:")
    print(f"  executor local: {tl:6.2f} s  ({tl / n:.2f} s per candidate)")
    print(f"  executor ray  : {tr:6.2f} s  ({tr / n:.2f} s per candidate, one node)")
    print(f"  Ray's cost per candidate: {(tr - tl) / n:+.2f} s (wall, in a batch of {n})")
    print(f"overhead in-process, one evaluation submit -> result, median of {args.calls}:")
    print(f"  local executor: {1000 * local_call:7.1f} ms")
    print(f"  Ray executor  : {1000 * ray_call:7.1f} ms  "
          f"(+{1000 * (ray_call - local_call):.1f} ms, {ray_call / local_call:.1f}x)")


if __name__ == "__main__":
    main()
