"""How often each policy keeps what is not an improvement, and what it costs.

    uv run python bench/verdicts.py                      # 300 candidates a policy
    uv run python bench/verdicts.py --candidates 60      # a quick look
    uv run python bench/verdicts.py --json > verdicts.json

A simulated optimization: the artifact holds a true value; each candidate changes it by a
true effect drawn once, the same for every policy -- mostly neutral (60%: 0), often
harmful (30%: -1 to -2 effect sizes), seldom an improvement (10%: +1 effect size).  The
scorer reports the true value plus Gaussian noise (by default as large as the effect
size), seeded per call so a run is reproducible.  Each policy drives the real ``loopengine
run`` over the same candidates in its own repository, and the bench reports

    false keeps      kept candidates that were no improvement (true effect <= 0), as a
                     share of those candidates: what ``policy.confidence`` bounds
    false share      the same keeps as a share of all keeps: what a reader of the history
                     sees
    missed           improvements that were discarded, as a share of the improvements
    final true       the artifact's true value at the end (it starts at 0)
    evaluations      runner+scorer runs, in total and against the naive policy

The naive policy is the default: ``repeats: 1`` and the stored baseline.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
HERE = Path(__file__).resolve()

POLICIES: dict[str, dict[str, Any]] = {
    "naive": {"repeats": 1},
    # calibrate's one-run advice for noise 1: z(0.95) * sqrt(2) * 1
    "threshold": {"repeats": 1, "min_improvement": 2.33},
    "repeats2": {"repeats": 2},
    "repeats3": {"repeats": 3},
    "repeats4": {"repeats": 4},
    "remeasure2": {"repeats": 2, "remeasure_baseline": True},
}
DEFAULT = ("naive", "threshold", "repeats2", "repeats3", "remeasure2")
TASK = """\
id: sim
description: simulated noisy evaluation
artifacts: {{include: [candidate.txt]}}
mutation: {{max_changed_lines: 10, allowed_file_types: [".txt"]}}
mutator: {{command: "cp {proposal} candidate.txt", cwd: tasks/sim}}
runner: {{command: "true", cwd: tasks/sim}}
scorer:
  command: "{py} {bench} score candidate.txt {state} {noise} {seed}"
  cwd: tasks/sim
  parse: {{score_field: score}}
objective: {{direction: maximize}}
constraints: []
policy: {policy}
budget: {{max_seconds: 300}}
logging: {{}}
"""


# ---------------------------------------------------------------------------
# The simulated scorer (``verdicts.py score ...``, called by the task)


def score(argv: list[str]) -> None:
    artifact, state, noise, seed = Path(argv[0]), Path(argv[1]), float(argv[2]), int(argv[3])
    true = float(artifact.read_text().split("\n")[0].removeprefix("true: "))
    counter = state / "evaluations"
    k = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(k + 1))
    print(json.dumps({"score": true + random.Random(f"{seed}-{k}").gauss(0.0, noise)}))


# ---------------------------------------------------------------------------
# One policy over all candidates


def effects(n: int, size: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.random()
        out.append(0.0 if u < 0.6 else -rng.uniform(1.0, 2.0) * size if u < 0.9 else size)
    return out


@dataclass
class Outcome:
    policy: str
    settings: dict[str, Any]
    candidates: int = 0
    improving: int = 0
    false_keeps: int = 0
    keeps: int = 0
    missed: int = 0
    crashes: int = 0
    true_value: float = 0.0
    evaluations: int = 0
    setup_evaluations: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def neutral_or_worse(self) -> int:
        return self.candidates - self.improving


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
                   cwd=repo, check=True, capture_output=True)


def run_policy(name: str, planned: list[float], noise: float, seed: int,
               workdir: Path) -> Outcome:
    settings = POLICIES[name]
    out = Outcome(name, settings)
    repo, state = workdir / name / "repo", workdir / name / "state"
    state.mkdir(parents=True)
    proposal = workdir / name / "proposal.txt"
    task = repo / "tasks" / "sim"
    task.mkdir(parents=True)
    (repo / ".gitignore").write_text("/work/\n")
    (task / "candidate.txt").write_text("true: 0\nid: start\n")
    policy = json.dumps({"min_improvement": 0.0, **settings})
    (task / "task.yaml").write_text(TASK.format(proposal=proposal, py=PY, bench=HERE,
                                                state=state, noise=noise, seed=seed,
                                                policy=policy))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    t0 = time.monotonic()
    true = 0.0
    proposal.write_text("true: 0\nid: start\n")  # no change: measures the first baseline
    iterate(repo)
    out.setup_evaluations = int((state / "evaluations").read_text())
    for i, effect in enumerate(planned):
        proposal.write_text(f"true: {true + effect!r}\nid: {i}\n")
        record = iterate(repo)
        status = record["status"]
        out.candidates += 1
        out.improving += effect > 0
        if status == "crash":
            out.crashes += 1
        if status == "keep":
            true += effect
            out.keeps += 1
            out.false_keeps += effect <= 0
        elif effect > 0:
            out.missed += 1
        kind = record["reason"].split(":")[0] if status == "discard" else status
        kind = "inconclusive" if kind == "inconclusive" else status
        out.reasons[kind] = out.reasons.get(kind, 0) + 1
    out.true_value = true
    out.evaluations = int((state / "evaluations").read_text())
    out.seconds = time.monotonic() - t0
    return out


def iterate(repo: Path) -> dict[str, Any]:
    proc = subprocess.run([PY, "-m", "loopengine", "run", "--task", "tasks/sim/task.yaml"],
                          cwd=repo, capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")})
    if not proc.stdout.strip():
        raise SystemExit(f"loopengine run printed no record:\n{proc.stderr}")
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------
# Report


def percent(part: int, whole: int) -> str:
    return f"{part}/{whole} = {100.0 * part / whole:.1f}%" if whole else f"{part}/0"


def report(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    naive = next((o for o in outcomes if o.policy == "naive"), None)
    lines = [
        f"{args.candidates} candidates a policy (60% neutral, 30% harmful, 10% +{args.effect:g}),"
        f" noise sd {args.noise:g}, seed {args.seed}; evaluations include the first "
        "baseline's",
        "",
        f"{'policy':<11} {'settings':<44} {'false keeps':>17} {'false share':>15} "
        f"{'missed':>14} {'final true':>10} {'evaluations':>21} {'time':>7}",
    ]
    for o in outcomes:
        ratio = f" {o.evaluations / naive.evaluations:.2f}x" if naive else ""
        per = o.evaluations / max(o.candidates, 1)
        lines.append(
            f"{o.policy:<11} {json.dumps(o.settings):<44} "
            f"{percent(o.false_keeps, o.neutral_or_worse):>17} "
            f"{percent(o.false_keeps, o.keeps):>15} {percent(o.missed, o.improving):>14} "
            f"{o.true_value:>10.2f} {o.evaluations:>6} ({per:.2f}/c){ratio:>6} "
            f"{o.seconds:>6.0f}s")
    if naive:
        met = [o.policy for o in outcomes
               if o.false_keeps <= 0.05 * o.neutral_or_worse
               and o.evaluations <= 4 * naive.evaluations]
        lines += ["", "target (false keeps <= 5% at <= 4x the naive evaluations): "
                  + (", ".join(met) if met else "met by none")]
    crashed = [f"{o.policy}: {o.crashes}" for o in outcomes if o.crashes]
    if crashed:
        lines.append("crashes: " + ", ".join(crashed))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["score"]:
        score(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--noise", type=float, default=1.0, help="the scorer's noise sd")
    parser.add_argument("--effect", type=float, default=1.0, help="the typical effect size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policies", default=",".join(DEFAULT),
                        help=f"comma-separated, from {', '.join(POLICIES)}")
    parser.add_argument("--jobs", type=int, default=2, help="policies run at once")
    parser.add_argument("--json", action="store_true", help="one JSON object per policy")
    args = parser.parse_args(argv)
    names = [n for n in args.policies.split(",") if n]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        parser.error(f"unknown policies: {', '.join(unknown)}")
    planned = effects(args.candidates, args.effect, args.seed)
    with (tempfile.TemporaryDirectory(prefix="loopengine-verdicts-") as tmp,
          concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool):
        futures = [pool.submit(run_policy, n, planned, args.noise, args.seed, Path(tmp))
                   for n in names]
        outcomes = [f.result() for f in futures]
    if args.json:
        for o in outcomes:
            print(json.dumps({**o.__dict__, "neutral_or_worse": o.neutral_or_worse}))
    else:
        print(report(outcomes, args))


if __name__ == "__main__":
    main(sys.argv[1:])
