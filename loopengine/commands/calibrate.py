"""``loopengine calibrate``: measure the baseline's noise and say what policy it needs.

The baseline (the main tree as it is, in a fresh sandbox like ``run``'s) is measured N
times with the task's runner and scorer, under the same integrity checks as a run.
Identical scores are a deterministic evaluation: ``repeats: 1`` then makes no false keep.
Otherwise, from the spread it computes two policies that keep a neutral candidate's
chance of being kept under ``1 - policy.confidence`` (5% by default), and how likely each
keeps a true improvement of the stated effect (``--effect``; default one standard
deviation):

- ``repeats: N`` and ``effect``: the sequential test (decide.py).  N is the smallest cap
  at which the test keeps the effect at least ``POWER`` of the time, found by a seeded
  simulation of the rule (so the advice depends only on effect / noise and confidence,
  and is the same every time for the same figures);
- ``repeats: 1`` with a ``min_improvement`` threshold: one run a side and no test, so
  the threshold must cover the noise of a difference of two runs (``sqrt(2)`` sigma).

Nothing is stored: calibrate only reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from loopengine import decide, fingerprint, git, measure, sandbox, stats
from loopengine.engine import cleanup
from loopengine.iteration.common import Ledger, Steps
from loopengine.iteration.prepare import check_repo_state
from loopengine.progress import Reporter
from loopengine.signals import SignalGuard
from loopengine.task import Task, load_task

# The chance of keeping a true improvement of the stated size that the advice aims at.
# The test discards about half the improvements of exactly the design effect early (its
# lower boundary), so even an uncapped test keeps only about 80% of them: two in three
# is what a cap buys at a sensible cost.
POWER = 0.65
CHOICES = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40)
SIMULATED = 400  # candidates a choice, seeded


@contextlib.contextmanager
def session(root: Path, task_path: str | None, *, at: str | None = None,
            reporter: Reporter | None = None,
            at_overlay: Sequence[str] = ()) -> Iterator[Ledger]:
    """An iteration's set-up without a mutator: a fresh sandbox, removed whatever happens.

    The sandbox holds the main tree as ``run`` would see it, or commit ``at`` with the
    main tree's ``at_overlay`` paths laid over it (then the caller loads the task from the
    sandbox).  :func:`steps` runs the steps, with the
    iteration's budget, environment, logs and checks; a killed session is cleaned up by
    the next run like a killed iteration.
    """
    it = Ledger(root, reporter or Reporter())
    with SignalGuard() as guard:
        it.guard = guard
        it.alive.claim()
        try:
            repo = git.repo_info(root)
            overlay: list[str] = []
            if at is None:
                it.task = load_task(task_path or "", root)
                it.repo = repo
                overlay = check_repo_state(it)
            else:
                it.repo = dataclasses.replace(repo, head=at, head_tree=None)
                overlay = list(at_overlay)  # the working tree's files a caller wants
            it.sb = sandbox.create(it.repo, it.run_id, overlay)
            it.alive.note_sandbox(it.sb)
            yield it
        finally:
            with guard.deferred():
                cleanup(it, keep_sandbox=False)
                it.alive.release()


def steps(it: Ledger, task: Task, deadline: float) -> Steps:
    """The step runner of a session, for ``task`` with this deadline."""
    assert it.sb is not None
    it.steps = Steps(task, it.sb, it.run_id, it.run_dir, deadline=deadline, report=it.report,
                     repo=it.repo, guard=it.guard)
    return it.steps


# ---------------------------------------------------------------------------
# The command


def calibrate(root: Path, task_path: str, repeats: int, effect: float | None, as_json: bool,
              reporter: Reporter) -> None:
    with session(root, task_path, reporter=reporter) as it:
        assert it.task is not None and it.sb is not None
        task = it.task
        # budget.max_seconds is one iteration's: calibrate gets it for every run.
        runner = steps(it, task, time.monotonic() + task.max_seconds * repeats)
        fp = fingerprint.compute(task, it.sb.ctx, it.sb.start_tree)
        evaluate = measure.Evaluator(task, it.sb, [], runner.run, runner.parse_score,
                                     log_dir=it.run_dir, phase=reporter.phase)
        scores = [evaluate(measure.BASELINE).score for _ in range(repeats)]
    result = advise(task, scores, effect)
    result["fingerprint"] = fp
    result["run_id"] = it.run_id
    if as_json:
        click.echo(json.dumps(result, separators=(",", ":")))
    else:
        click.echo(describe(task, result))


def advise(task: Task, scores: list[float], effect: float | None) -> dict[str, Any]:
    """Mean, spread and the two policies, as data."""
    n = len(scores)
    sd = stats.stdev(scores)
    confidence = task.policy.confidence
    size = effect if effect is not None else sd
    out: dict[str, Any] = {
        "task_id": task.id, "runs": n, "scores": scores, "mean": stats.mean(scores),
        "stdev": sd, "effect": size, "confidence": confidence,
        "deterministic": sd == 0.0,
    }
    if sd == 0.0:
        # Identical scores: exactly no noise, so one run a side and no threshold.
        out["tested"] = {"repeats": 1, "effect": None, "min_improvement": 0.0, "power": 1.0}
        out["single"] = {"repeats": 1, "min_improvement": 0.0, "power": 1.0}
        return out
    for runs in CHOICES:
        power, cost = simulate(size / sd, runs, confidence)
        if power >= POWER:
            break
    out["tested"] = {"repeats": runs, "effect": effect, "min_improvement": 0.0,
                     "power": power, "runs_per_neutral_candidate": cost}
    # One run a side: the difference of two runs has sd * sqrt(2); sd itself is an
    # estimate from n runs, hence Student's t with n - 1 degrees of freedom.
    alpha = 1.0 - confidence
    spread = sd * math.sqrt(2.0)
    threshold = stats.t_ppf(1.0 - alpha, n - 1) * spread if n > 1 else math.inf
    out["single"] = {"repeats": 1, "min_improvement": threshold,
                     "power": 1.0 - stats.t_cdf((threshold - size) / spread, n - 1)}
    return out


def simulate(effect_in_sd: float, repeats: int, confidence: float) -> tuple[float, float]:
    """The share of candidates ``effect_in_sd`` better than a fresh baseline that the
    sequential test keeps with this cap, and the runs (both sides) that a candidate no
    better than the baseline costs; seeded, with the noise known."""
    rng = random.Random(f"calibrate-{effect_in_sd!r}-{repeats}-{confidence!r}")
    kept, runs = 0, 0
    for true in (effect_in_sd, 0.0):
        for _ in range(SIMULATED):
            base: list[float] = []
            cand: list[float] = []
            for k in range(1, repeats + 1):
                while len(base) < _target(repeats, k):
                    base.append(rng.gauss(0.0, 1.0))
                cand.append(rng.gauss(true, 1.0))
                se = math.sqrt(1.0 / len(cand) + 1.0 / len(base))
                z = (stats.mean(cand) - stats.mean(base)) / se
                state = decide.sequential(z, effect_in_sd / se, len(cand), confidence)
                if state != "more":
                    break
            if true > 0.0:
                kept += state == "keep"
            else:
                runs += len(cand)
    return kept / SIMULATED, runs / SIMULATED


def _target(repeats: int, k: int) -> int:
    return int(min(measure.BASELINE_RATIO * k, measure.BASELINE_CAP * repeats))


def describe(task: Task, r: dict[str, Any]) -> str:
    policy = task.policy
    lines = [
        f"task {task.id}: {r['runs']} runs of the baseline "
        f"(evaluation fingerprint {r['fingerprint'][:19]}...)",
        "scores: " + ", ".join(f"{s:.6g}" for s in r["scores"]),
        f"mean {r['mean']:.6g}, standard deviation {r['stdev']:.6g}",
    ]
    if r["deterministic"]:
        lines.append(f"the evaluation is deterministic ({r['runs']} identical scores): "
                     "repeats 1 and min_improvement 0 make no false keeps")
    else:
        rate = f"{1.0 - r['confidence']:.0%}"
        tested, single = r["tested"], r["single"]
        effect = "null" if tested["effect"] is None else f"{tested['effect']:.6g}"
        lines += [
            f"to keep false keeps under {rate} (confidence {r['confidence']:g}) for an effect "
            f"of {r['effect']:.6g} (--effect; default: one standard deviation):",
            f"  repeats: {tested['repeats']}, effect: {effect} -- the sequential test keeps "
            f"the effect {tested['power']:.0%} of the time; a candidate that is no "
            f"improvement costs about {tested['runs_per_neutral_candidate']:.1f} of its own runs",
            f"  repeats: 1, min_improvement: {single['min_improvement']:.6g} -- one run a "
            f"side, no test; keeps the effect {single['power']:.0%} of the time",
        ]
    effect_now = "null" if policy.effect is None else f"{policy.effect:g}"
    lines.append(f"the task now has repeats: {policy.repeats}, effect: {effect_now}, "
                 f"min_improvement: {policy.min_improvement:g}, confidence: "
                 f"{policy.confidence:g}")
    return "\n".join(lines)
