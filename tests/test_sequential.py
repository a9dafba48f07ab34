"""The sequential rule's error, simulated: many zero-effect candidates, seeded, pure Python.

Each candidate goes through the real measurement loop (``measure.measure`` and
``decide.judge``) with a stand-in evaluation whose scores are Gaussian noise around the
same true value for the baseline and the candidate.  A keep of such a candidate is a
false keep; ``policy.confidence`` promises at most ``1 - confidence`` of them, whichever
look stops.  The observed rate must be within its binomial bound of that (three standard
errors above it), overall and at every look.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from loopengine import stats
from loopengine.measure import Measurement, Plan, Sample, measure
from loopengine.task import Task, load_task


def make_task(tmp_path: Path, **policy: Any) -> Task:
    pol = {"min_improvement": 0.0, **policy}
    path = tmp_path / "task.yaml"
    path.write_text(
        "id: t\ndescription: d\nartifacts: {include: [a.md]}\nmutation: {}\n"
        "mutator: {command: 'true'}\nrunner: {command: 'true'}\nscorer: {command: 'true'}\n"
        f"objective: {{}}\nconstraints: []\npolicy: {json.dumps(pol)}\nbudget: {{}}\n"
        "logging: {}\n")
    return load_task(path, tmp_path)


class Gauss:
    longest = 0.0

    def __init__(self, rng: random.Random, baseline: float, candidate: float,
                 sd: float = 1.0) -> None:
        self.rng, self.sd = rng, sd
        self.mu = {"baseline": baseline, "candidate": candidate}

    def __call__(self, side: str) -> Sample:
        return Sample(self.mu[side] + self.rng.gauss(0.0, self.sd), {})


def binomial_bound(alpha: float, n: int) -> float:
    return alpha + 3.0 * math.sqrt(alpha * (1.0 - alpha) / n)


def false_keeps(task: Task, n: int, seed: int, *, true_gap: float = 0.0,
                known_noise: bool = True, shared_baseline: bool = False) -> tuple[int, list[int]]:
    """Keeps of ``n`` candidates ``true_gap`` better than their baseline, and the look
    (candidate runs) at which each keep came."""
    rng = random.Random(seed)
    keeps, at = 0, [0] * (task.policy.repeats + 1)
    pool = stats.Pool(ss=200.0, df=200) if known_noise else stats.Pool()
    stored: list[float] = []
    for _ in range(n):
        how = Plan("stored", tuple(stored)) if stored else Plan("remeasured")
        m = Measurement(baseline=list(stored), noise=pool)
        measure(task, Gauss(rng, 0.0, true_gap), how, m, has_change=True)
        assert m.look is not None and m.look.state in ("keep", "discard")
        if m.look.state == "keep":
            keeps += 1
            at[len(m.candidate)] += 1
            stored = []
        elif shared_baseline:
            stored = list(m.baseline)
    return keeps, at


@pytest.mark.parametrize(("confidence", "repeats"), [(0.95, 12), (0.95, 4), (0.9, 8)])
def test_zero_effect_candidates_are_kept_at_most_one_minus_confidence(
        tmp_path: Path, confidence: float, repeats: int) -> None:
    task = make_task(tmp_path, repeats=repeats, confidence=confidence)
    n = 2000
    keeps, at = false_keeps(task, n, seed=repeats)
    alpha = 1.0 - confidence
    assert keeps / n <= binomial_bound(alpha, n), (keeps, at)
    # At every look, the keeps so far stay within the bound too.
    so_far = 0
    for look in range(1, repeats + 1):
        so_far += at[look]
        assert so_far / n <= binomial_bound(alpha, n), (look, at)
    assert at[1] == 0  # a keep needs the candidate's second run


def test_the_bound_holds_with_the_noise_estimated_from_scratch(tmp_path: Path) -> None:
    task = make_task(tmp_path, repeats=8)
    n = 1500
    keeps, _ = false_keeps(task, n, seed=7, known_noise=False)
    assert keeps / n <= binomial_bound(0.05, n)


def test_the_bound_holds_for_a_campaign_sharing_its_baseline(tmp_path: Path) -> None:
    # The baseline is kept across candidates until a keep: a baseline measured low meets
    # many candidates.  Still at most 1 - confidence of them are kept.
    task = make_task(tmp_path, repeats=12)
    n = 2000
    keeps, _ = false_keeps(task, n, seed=11, known_noise=False, shared_baseline=True)
    assert keeps / n <= binomial_bound(0.05, n)


def test_min_improvement_is_the_null(tmp_path: Path) -> None:
    # A candidate better by exactly min_improvement is no keep either.
    task = make_task(tmp_path, repeats=8, min_improvement=0.5)
    n = 1500
    keeps, _ = false_keeps(task, n, seed=3, true_gap=0.5)
    assert keeps / n <= binomial_bound(0.05, n)


def test_a_real_improvement_of_the_design_effect_is_found_often(tmp_path: Path) -> None:
    # Not a bound, a floor against a rule that discards everything: with repeats 12 and
    # a well-known noise, most candidates one noise sd better are kept.
    task = make_task(tmp_path, repeats=12)
    n = 500
    keeps, _ = false_keeps(task, n, seed=5, true_gap=1.0)
    assert keeps / n >= 0.5
