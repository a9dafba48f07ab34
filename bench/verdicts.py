"""How often each policy keeps what is not an improvement, what it misses, and what it costs.

    uv run python bench/verdicts.py                          # 4 seeds x 300 candidates, both mixes
    uv run python bench/verdicts.py --candidates 60 --seeds 1   # a quick look
    uv run python bench/verdicts.py --json > verdicts.json
    uv run python bench/verdicts.py --simulate --seeds 1,2,3,4,5,6,7,8   # in-process, fast

A simulated optimization: the artifact holds a true value; each candidate changes it by a
true effect drawn once, the same for every policy.  Two mixes of effects:

    readme     60% neutral (0), 30% harmful (-1 to -2 effect sizes), 10% +1 effect size
    fifteen    60% neutral, 25% harmful (-1), 15% +1 effect size

The scorer reports the true value plus Gaussian noise (by default as large as the effect
size), seeded per call so a run is reproducible.  Each policy drives the real
``loopengine run`` over the same candidates in its own repository, once per seed, and
the bench reports the mean over the seeds and the spread (lowest to highest) of

    false keeps      kept neutral candidates (true effect 0), as a share of them: what
                     ``policy.confidence`` bounds
    worse kept       kept candidates that were no improvement (true effect <= 0), as a
                     share of them
    missed           improvements that were discarded, as a share of the improvements
    final true       the artifact's true value at the end (it starts at 0)
    runs             runner+scorer runs, counted with the records' ``runs`` (the first
                     baseline's included), per candidate and against the naive policy

The naive policy is the default: ``repeats: 1`` and the stored baseline.

``--simulate`` runs the same campaigns in this process instead of through the CLI: the
engine's own measurement loop, decision and baseline store rules (``measure.plan``,
``measure.measure``, ``decide.decide``, ``measure.new_baseline``, the pooled noise) with
a Gaussian stand-in for the runner and scorer, and no git, sandbox or subprocess.  It is
the same rule at a thousandth of the cost, for many seeds; the CLI run checks that the
real command agrees with it.
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
    "repeats3": {"repeats": 3},
    # calibrate's advice for an effect of one noise standard deviation
    "sequential": {"repeats": 12},
    "sequential8": {"repeats": 8},
    "sequential10": {"repeats": 10},
    "remeasure4": {"repeats": 4, "remeasure_baseline": True},
}
DEFAULT = ("naive", "sequential")
MIXES = ("readme", "fifteen")
TARGETS = {  # mix -> (missed at most, runs against naive at most); false keeps <= 5%
    "fifteen": (0.50, 4.0),
    "readme": (0.50, 3.5),
}
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
# One policy over all candidates of one seed


def effects(n: int, size: float, seed: int, mix: str) -> list[float]:
    rng = random.Random(f"{mix}-{seed}")
    out = []
    for _ in range(n):
        u = rng.random()
        if mix == "readme":
            out.append(0.0 if u < 0.6 else -rng.uniform(1.0, 2.0) * size if u < 0.9 else size)
        else:
            out.append(size if u < 0.15 else 0.0 if u < 0.75 else -size)
    return out


@dataclass
class Outcome:
    policy: str
    mix: str
    seed: int
    settings: dict[str, Any]
    candidates: int = 0
    improving: int = 0
    neutral: int = 0
    neutral_kept: int = 0
    worse_kept: int = 0
    keeps: int = 0
    missed: int = 0
    crashes: int = 0
    true_value: float = 0.0
    runs: int = 0  # the records' runs, the setup iteration's included
    evaluations: int = 0  # the scorer's own count: must equal runs
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def not_improving(self) -> int:
        return self.candidates - self.improving


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
                   cwd=repo, check=True, capture_output=True)


def run_policy(name: str, mix: str, seed: int, planned: list[float], noise: float,
               workdir: Path) -> Outcome:
    settings = POLICIES[name]
    out = Outcome(name, mix, seed, settings)
    home = workdir / f"{name}-{mix}-{seed}"
    repo, state = home / "repo", home / "state"
    state.mkdir(parents=True)
    proposal = home / "proposal.txt"
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
    out.runs += iterate(repo)["runs"]
    for i, effect in enumerate(planned):
        proposal.write_text(f"true: {true + effect!r}\nid: {i}\n")
        record = iterate(repo)
        out.runs += record["runs"]
        status = record["status"]
        out.candidates += 1
        out.improving += effect > 0
        out.neutral += effect == 0
        if status == "crash":
            out.crashes += 1
        if status == "keep":
            true += effect
            out.keeps += 1
            out.worse_kept += effect <= 0
            out.neutral_kept += effect == 0
        elif effect > 0:
            out.missed += 1
        kind = record["reason"].split(":")[0] if status == "discard" else status
        kind = kind if kind in ("inconclusive", "not promising") else status
        out.reasons[kind] = out.reasons.get(kind, 0) + 1
    out.true_value = true
    out.evaluations = int((state / "evaluations").read_text())
    out.seconds = time.monotonic() - t0
    return out


def simulate_policy(name: str, mix: str, seed: int, planned: list[float], noise: float,
                    workdir: Path) -> Outcome:
    """The campaign of :func:`run_policy`, in-process (see ``--simulate``)."""
    from loopengine import decide, measure, stats
    from loopengine.results import Baseline
    from loopengine.task import load_task

    settings = POLICIES[name]
    out = Outcome(name, mix, seed, settings)
    home = workdir / f"sim-{name}-{mix}-{seed}"
    home.mkdir(parents=True)
    policy = json.dumps({"min_improvement": 0.0, **settings})
    (home / "task.yaml").write_text(TASK.format(proposal="p", py="python", bench="b",
                                                state="s", noise=noise, seed=seed,
                                                policy=policy).replace("tasks/sim", "."))
    task = load_task(home / "task.yaml", home)
    rng = random.Random(f"simulate-{seed}")
    t0 = time.monotonic()
    true, stored, pool = 0.0, None, stats.Pool()

    class Gauss:
        longest = 0.0

        def __init__(self, candidate: float) -> None:
            self.mu = {"baseline": true, "candidate": candidate}

        def __call__(self, side: str) -> Any:
            out.evaluations += 1
            return measure.Sample(self.mu[side] + rng.gauss(0.0, noise), {})

    def iterate_in_process(effect: float, has_change: bool) -> str:
        nonlocal stored, pool
        how = measure.plan(task, stored, "sim")
        m = measure.Measurement(baseline=list(how.stored),
                                noise=pool if task.policy.repeats > 1 else stats.Pool())
        measure.measure(task, Gauss(true + effect), how, m, has_change=has_change)
        base = stats.mean(m.baseline) if m.baseline and how.source != "none" else None
        assert m.score is not None
        verdict = decide.decide(score=m.score, baseline=base, direction="maximize",
                                min_improvement=task.policy.min_improvement, constraints=(),
                                metrics={}, has_change=has_change,
                                keep_when_no_baseline=task.policy.keep_when_no_baseline,
                                verdict=m.look)
        kept = verdict.status == "keep"
        new = measure.new_baseline(m, how, kept=kept, has_change=has_change)
        if new is not None:
            stored = Baseline(score=new[0], artifacts="x", run_id="r", fingerprint="sim",
                              scores=new[1])
        if task.policy.repeats > 1:
            for group in measure.retired_groups(m, kept=kept):
                pool = pool + stats.Pool.of(group)
        out.runs += m.runs
        reason = verdict.reason.split(":")[0] if verdict.status == "discard" else ""
        return verdict.status if reason not in ("inconclusive", "not promising") else reason

    iterate_in_process(0.0, has_change=False)
    for effect in planned:
        status = iterate_in_process(effect, has_change=True)
        out.candidates += 1
        out.improving += effect > 0
        out.neutral += effect == 0
        if status == "keep":
            true += effect
            out.keeps += 1
            out.worse_kept += effect <= 0
            out.neutral_kept += effect == 0
        elif effect > 0:
            out.missed += 1
        kind = status if status in ("inconclusive", "not promising", "keep") else "discard"
        out.reasons[kind] = out.reasons.get(kind, 0) + 1
    out.true_value = true
    out.seconds = time.monotonic() - t0
    return out


def iterate(repo: Path) -> dict[str, Any]:
    proc = subprocess.run([PY, "-m", "loopengine", "run", "--task", "tasks/sim/task.yaml"],
                          cwd=repo, capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")})
    if not proc.stdout.strip():
        raise SystemExit(f"loopengine run printed no record:\n{proc.stderr}")
    record: dict[str, Any] = json.loads(proc.stdout)
    return record


# ---------------------------------------------------------------------------
# Report: the mean over the seeds and the spread


def share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def spread(values: list[float], fmt: str) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    seeds = sorted({o.seed for o in outcomes})
    how = "in-process simulation of the rule" if args.simulate else "the real loopengine run"
    lines = [f"{how}: {args.candidates} candidates a seed, seeds "
             f"{', '.join(map(str, seeds))}; noise sd {args.noise:g}, effect size "
             f"{args.effect:g}; mean over the seeds (lowest-highest)"]
    verdicts: list[str] = []
    for mix in [m for m in MIXES if any(o.mix == m for o in outcomes)]:
        rows = [o for o in outcomes if o.mix == mix]
        naive = {o.seed: o.runs for o in rows if o.policy == "naive"}
        lines += ["", f"mix {mix}:",
                  f"{'policy':<11} {'settings':<42} {'false keeps':>18} {'worse kept':>18} "
                  f"{'missed':>20} {'final true':>18} {'runs/cand.':>10} {'x naive':>18}"]
        for name in dict.fromkeys(o.policy for o in rows):
            mine = [o for o in rows if o.policy == name]
            fk = [100 * share(o.neutral_kept, o.neutral) for o in mine]
            wk = [100 * share(o.worse_kept, o.not_improving) for o in mine]
            missed = [100 * share(o.missed, o.improving) for o in mine]
            true = [o.true_value for o in mine]
            per = sum(o.runs for o in mine) / max(sum(o.candidates for o in mine), 1)
            ratio = [o.runs / naive[o.seed] for o in mine if o.seed in naive]
            lines.append(
                f"{name:<11} {json.dumps(POLICIES[name]):<42} {spread(fk, '.1f') + '%':>18} "
                f"{spread(wk, '.1f') + '%':>18} {spread(missed, '.1f') + '%':>20} "
                f"{spread(true, '.1f'):>18} {per:>10.2f} "
                f"{spread(ratio, '.2f') + 'x' if ratio else '-':>18}")
            total_fk = share(sum(o.neutral_kept for o in mine), sum(o.neutral for o in mine))
            total_missed = share(sum(o.missed for o in mine), sum(o.improving for o in mine))
            total_ratio = (sum(o.runs for o in mine if o.seed in naive)
                           / max(sum(naive[o.seed] for o in mine if o.seed in naive), 1))
            if name != "naive" and mix in TARGETS and naive:
                most_missed, most_runs = TARGETS[mix]
                ok = (total_fk <= 0.05 and total_missed <= most_missed
                      and total_ratio <= most_runs)
                verdicts.append(
                    f"{mix}/{name}: false keeps {total_fk:.1%} (<= 5%), missed "
                    f"{total_missed:.1%} (<= {most_missed:.0%}) at {total_ratio:.2f}x naive "
                    f"(<= {most_runs:g}x), pooled over the seeds: "
                    f"{'met' if ok else 'NOT met'}")
    if verdicts:
        lines += ["", "targets:"] + [f"  {v}" for v in verdicts]
    mismatched = [f"{o.policy}/{o.mix}/{o.seed}" for o in outcomes if o.runs != o.evaluations]
    if mismatched:
        lines.append("records' runs differ from the scorer's count: " + ", ".join(mismatched))
    crashed = [f"{o.policy}/{o.mix}/{o.seed}: {o.crashes}" for o in outcomes if o.crashes]
    if crashed:
        lines.append("crashes: " + ", ".join(crashed))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["score"]:
        score(argv[1:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--noise", type=float, default=1.0, help="the scorer's noise sd")
    parser.add_argument("--effect", type=float, default=1.0, help="the typical effect size")
    parser.add_argument("--seeds", default="1,2,3,4", help="comma-separated")
    parser.add_argument("--mixes", default=",".join(MIXES), help="readme, fifteen")
    parser.add_argument("--policies", default=",".join(DEFAULT),
                        help=f"comma-separated, from {', '.join(POLICIES)}")
    parser.add_argument("--jobs", type=int, default=2, help="policy runs at once")
    parser.add_argument("--json", action="store_true", help="one JSON object per policy run")
    parser.add_argument("--simulate", action="store_true",
                        help="in-process: the engine's rule without the CLI (fast)")
    args = parser.parse_args(argv)
    names = [n for n in args.policies.split(",") if n]
    mixes = [m for m in args.mixes.split(",") if m]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    unknown = [n for n in names if n not in POLICIES] + [m for m in mixes if m not in MIXES]
    if unknown:
        parser.error(f"unknown policies or mixes: {', '.join(unknown)}")
    with (tempfile.TemporaryDirectory(prefix="loopengine-verdicts-") as tmp,
          concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool):
        one = simulate_policy if args.simulate else run_policy
        futures = [pool.submit(one, n, mix, seed,
                               effects(args.candidates, args.effect, seed, mix),
                               args.noise, Path(tmp))
                   for seed in seeds for mix in mixes for n in names]
        outcomes = [f.result() for f in futures]
    if args.json:
        for o in outcomes:
            print(json.dumps({**o.__dict__, "not_improving": o.not_improving}))
    else:
        print(report(outcomes, args))


if __name__ == "__main__":
    main(sys.argv[1:])
