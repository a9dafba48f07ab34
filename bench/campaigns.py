"""What a batch buys: throughput with --jobs, and the engine's cost per candidate.

    uv run python bench/campaigns.py              # both measurements
    uv run python bench/campaigns.py --json       # the figures as one JSON object

1. Throughput (candidates evaluated per minute) of one batch of 8 candidates whose runner
   takes 2 seconds, at ``--jobs 1`` and ``--jobs 2``; the ratio is what the second job
   buys (the aim on a 2-core machine: >= 1.8x).  The baseline is stored beforehand, so
   the batch measures candidates only.
2. The engine's cost per candidate: one batch of 8 (``--jobs 1``) against 8 single
   ``loopengine run`` calls, with steps that do nothing (``true``), so the time is the
   engine's own (process start, sandboxes, git, records).

Each measurement runs in a fresh repository under a temporary folder.  Figures move with
the load of the machine: run it on a quiet one, more than once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = sys.executable
CANDIDATES = 8


def task_yaml(runner: str) -> str:
    mutate = (f"{PY} -c \"import os; open('notes.md', 'a')"
              ".write('line %s\\\\n' % os.environ.get('LOOPENGINE_CANDIDATE', 'x'))\"")
    score = (f"{PY} -c \"import json; print(json.dumps({{'score': "
             "len(open('notes.md').read().splitlines())}))\"")
    return f"""id: bench
description: campaigns bench
artifacts: {{include: [notes.md], max_files_per_iteration: 1}}
mutation: {{max_changed_lines: 10, allowed_file_types: [".md"]}}
mutator: {{type: command, command: {json.dumps(mutate)}, cwd: tasks/bench}}
runner: {{command: {json.dumps(runner)}, cwd: tasks/bench, timeout_seconds: 60}}
scorer:
  type: command
  command: {json.dumps(score)}
  cwd: tasks/bench
  parse: {{format: json, score_field: score}}
objective: {{direction: maximize}}
constraints: []
policy: {{min_improvement: 0.0, keep_when_no_baseline: true, commit_on_keep: true}}
budget: {{max_seconds: 600}}
logging: {{results_path: work/results.jsonl}}
isolation: {{mode: none}}
"""


def make_repo(base: Path, runner: str) -> Path:
    repo = base / "repo"
    (repo / "tasks" / "bench").mkdir(parents=True)
    (repo / "tasks" / "bench" / "notes.md").write_text("first\n")
    (repo / "tasks" / "bench" / "task.yaml").write_text(task_yaml(runner))
    (repo / ".gitignore").write_text("/work/\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=repo, check=True)
    return repo


def loopengine(repo: Path, *args: str) -> float:
    """One ``loopengine run`` call; its wall time."""
    return _run(repo, *args)[0]


def _run(repo: Path, *args: str) -> tuple[float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    proc = subprocess.run([PY, "-m", "loopengine", "run", "--task", "tasks/bench/task.yaml",
                           *args], cwd=repo, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"loopengine run {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return took, [json.loads(line) for line in proc.stdout.splitlines()]


def throughput(jobs: int) -> tuple[float, float]:
    """Candidates per minute, a batch of 8 with a 2-second runner: over the whole call,
    and from the first candidate's start to the last one's end (without the process's
    start-up: Python, imports, loading the task)."""
    with tempfile.TemporaryDirectory(prefix="bench-campaigns-") as tmp:
        repo = make_repo(Path(tmp), "sleep 2")
        loopengine(repo)  # stores the baseline
        took, records = _run(repo, "--candidates", str(CANDIDATES), "--jobs", str(jobs))
    starts = [dt.datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")).timestamp()
              for r in records]
    ends = [s + r["duration_seconds"] for s, r in zip(starts, records, strict=True)]
    return CANDIDATES / took * 60.0, CANDIDATES / (max(ends) - min(starts)) * 60.0


def engine_cost() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-campaigns-") as tmp:
        repo = make_repo(Path(tmp), "true")
        loopengine(repo)
        singles = sum(loopengine(repo) for _ in range(CANDIDATES))
        batch = loopengine(repo, "--candidates", str(CANDIDATES))
    return {"single_seconds_per_candidate": singles / CANDIDATES,
            "batch_seconds_per_candidate": batch / CANDIDATES,
            "single_over_batch": singles / batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    os.environ.pop("LOOPENGINE_SANDBOX_ROOT", None)
    (one, one_steady), (two, two_steady) = throughput(1), throughput(2)
    cost = engine_cost()
    figures: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "candidates_per_minute_jobs1": round(one, 2),
        "candidates_per_minute_jobs2": round(two, 2),
        "jobs2_over_jobs1": round(two / one, 3),
        "steady_jobs2_over_jobs1": round(two_steady / one_steady, 3),
        **{k: round(v, 4) for k, v in cost.items()},
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"throughput, {CANDIDATES} candidates, 2 s runner ({figures['cpus']} CPUs):")
    print(f"  --jobs 1: {one:6.1f} candidates/min")
    print(f"  --jobs 2: {two:6.1f} candidates/min   ratio {two / one:.2f}x (aim >= 1.8x)")
    print(f"  without the process start-up: {one_steady:.1f} vs {two_steady:.1f} "
          f"candidates/min, ratio {two_steady / one_steady:.2f}x")
    print(f"  (load average {figures['load_average']:.1f})")
    print("engine cost per candidate, steps that do nothing:")
    print(f"  8 single runs: {cost['single_seconds_per_candidate']:.3f} s each")
    print(f"  one batch of 8: {cost['batch_seconds_per_candidate']:.3f} s each   "
          f"ratio {cost['single_over_batch']:.2f}x")


if __name__ == "__main__":
    main()
