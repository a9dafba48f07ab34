"""What isolation costs: one step, and one iteration, under bwrap against mode none.

    uv run python bench/isolation.py                 # 30 rounds (about a minute on 2 CPUs)
    uv run python bench/isolation.py --rounds 10 --json

Interleaved, in a shuffled order each round:

    step_none      process.run_step of ``true`` with mode none (under the reaper shim)
    step_bwrap     the same with mode bwrap (the command line a real step gets)
    step_plain     ``/bin/sh -c true`` by subprocess, no loopengine at all (the floor)
    run_none       ``loopengine run`` of a trivial task (3 steps) with mode none
    run_bwrap      the same with mode bwrap

and, once per round, the time to kill a pid-hopper (a process that drops the engine's
variables, detaches and changes its pid every 2 ms): the step's wall time minus the
same step without the hopper, under each mode.  Reports medians and the ratios
bwrap / none.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from loopengine import isolation  # noqa: E402
from loopengine.process import run_step, step_env  # noqa: E402
from loopengine.task import Isolation  # noqa: E402

PY = sys.executable
HOPPER = PROJECT / "tests" / "bin" / "pid_hopper.py"
TASK = """\
id: bench
description: isolation benchmark, trivial steps
artifacts: {{include: [notes.md]}}
mutation: {{max_changed_lines: 10, allowed_file_types: [".md"]}}
mutator: {{type: command, command: "echo x >> notes.md", cwd: tasks/bench}}
runner: {{command: "true", cwd: tasks/bench}}
scorer:
  type: command
  command: "echo '{{\\"score\\": 1}}'"
  cwd: tasks/bench
  parse: {{format: json, score_field: score, metrics_field: null}}
objective: {{direction: maximize}}
constraints: []
policy: {{min_improvement: 0.0, keep_when_no_baseline: true, commit_on_keep: false}}
budget: {{max_seconds: 60}}
logging: {{results_path: work/results.jsonl}}
isolation: {{mode: {mode}}}
"""


def make_repo(base: Path) -> Path:
    repo = base / "repo"
    (repo / "tasks" / "bench").mkdir(parents=True)
    (repo / "tasks" / "bench" / "notes.md").write_text("x\n")
    (repo / ".gitignore").write_text("/work/\n")
    for mode in ("none", "bwrap"):
        (repo / "tasks" / "bench" / f"{mode}.yaml").write_text(TASK.format(mode=mode))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    return repo


def step(repo: Path, base: Path, mode: str, command: str = "true") -> float:
    tree = base / "tree"
    tree.mkdir(exist_ok=True)
    started = time.perf_counter()
    result = run_step("runner", command, cwd=tree, env=step_env(os.environ, {}), timeout=30,
                      log_path=base / "step.log", isolation=Isolation(mode=mode),
                      places=isolation.Places(tree, repo, repo / ".git"))
    elapsed = time.perf_counter() - started
    assert result.ok, result
    return elapsed


def plain(base: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", "true"], cwd=base, check=True)
    return time.perf_counter() - started


def loop_run(repo: Path, mode: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([PY, "-m", "loopengine", "run", "--task", f"tasks/bench/{mode}.yaml"],
                          cwd=repo, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    record = json.loads(proc.stdout)
    assert record["isolation"] == mode and record["status"] != "crash", record
    return elapsed


def hopper_kill(repo: Path, base: Path, mode: str) -> float:
    """Seconds the step takes beyond its own 0.2 s to leave nothing behind."""
    marker = f"bench-hopper-{uuid.uuid4().hex}"
    with_hopper = step(repo, base, mode,
                       f"{PY} {HOPPER} {marker} </dev/null >/dev/null 2>&1 & sleep 0.2")
    alone = step(repo, base, mode, "sleep 0.2")
    left = [p for p in os.listdir("/proc") if p.isdigit() and _has(p, marker)]
    assert not left, f"survivors: {left}"
    return with_hopper - alone


def _has(pid: str, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    found = isolation.probe()
    if found.bwrap is None:
        sys.exit(f"bwrap does not work here: {found.why}")
    base = Path(tempfile.mkdtemp(prefix="loopengine-bench-isolation-"))
    try:
        repo = make_repo(base)
        cases: dict[str, Callable[[], float]] = {
            "step_none": lambda: step(repo, base, "none"),
            "step_bwrap": lambda: step(repo, base, "bwrap"),
            "step_plain": lambda: plain(base),
            "run_none": lambda: loop_run(repo, "none"),
            "run_bwrap": lambda: loop_run(repo, "bwrap"),
            "hopper_none": lambda: hopper_kill(repo, base, "none"),
            "hopper_bwrap": lambda: hopper_kill(repo, base, "bwrap"),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for name in cases:  # warm up: caches, the probe
            cases[name]()
        for _ in range(args.rounds):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                times[name].append(cases[name]())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    figures = {
        "rounds": args.rounds,
        "bwrap": f"{found.bwrap.version} ({found.bwrap.origin})",
        "median_ms": {name: round(value * 1000, 2) for name, value in med.items()},
        "step_overhead_ms": round((med["step_bwrap"] - med["step_none"]) * 1000, 2),
        "step_ratio_bwrap_to_none": round(med["step_bwrap"] / med["step_none"], 3),
        "run_overhead_ms": round((med["run_bwrap"] - med["run_none"]) * 1000, 2),
        "run_ratio_bwrap_to_none": round(med["run_bwrap"] / med["run_none"], 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"bubblewrap {figures['bwrap']}, {args.rounds} rounds, medians:")
    for name, value in figures["median_ms"].items():
        print(f"  {name:<13} {value:8.2f} ms")
    print(f"one step:      bwrap - none = {figures['step_overhead_ms']} ms "
          f"(ratio {figures['step_ratio_bwrap_to_none']})")
    print(f"one iteration: bwrap - none = {figures['run_overhead_ms']} ms "
          f"(ratio {figures['run_ratio_bwrap_to_none']})")
    print(f"pid-hopper, extra time to leave nothing: none {figures['median_ms']['hopper_none']}"
          f" ms, bwrap {figures['median_ms']['hopper_bwrap']} ms")


if __name__ == "__main__":
    main()
