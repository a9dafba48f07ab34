"""The statistics against known values, and the decision and measurement logic on its own.

Reference values come from closed forms (Student's t with 1 and 2 degrees of freedom)
and from scipy 1.17 (``scipy.stats.t``, ``scipy.special.betainc``,
``scipy.stats.ttest_ind(equal_var=False)``), copied here so the tests need no scipy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from loopengine import stats
from loopengine.decide import boundaries, decide, judge
from loopengine.measure import (
    Measurement,
    Plan,
    Sample,
    mean_metrics,
    measure,
    missing_artifacts,
    new_baseline,
    plan,
)
from loopengine.results import Baseline
from loopengine.task import load_task

# ---------------------------------------------------------------------------
# The distribution


@pytest.mark.parametrize("t", [-30.0, -3.0, -0.5, 0.0, 0.7, 2.0, 12.0])
def test_t_cdf_matches_the_closed_forms(t: float) -> None:
    cauchy = 0.5 + math.atan(t) / math.pi  # df = 1
    two = 0.5 + t / (2.0 * math.sqrt(2.0 + t * t))  # df = 2
    assert stats.t_cdf(t, 1) == pytest.approx(cauchy, abs=1e-13)
    assert stats.t_cdf(t, 2) == pytest.approx(two, abs=1e-13)


@pytest.mark.parametrize(("t", "df", "expected"), [
    (2.0, 5, 0.9490302605850709),
    (-1.2, 3, 0.15813105734905258),
    (0.3, 24.99, 0.6166707598101213),
    (2.5, 1000, 0.9937107160994546),
])
def test_t_cdf_known_values(t: float, df: float, expected: float) -> None:
    assert stats.t_cdf(t, df) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 10, 2.2281388519649385),
    (0.95, 3, 2.3533634348018233),
    (0.95, 1, 6.313751514675041),
    (0.99, 20, 2.527977002740546),
    (0.05, 4, -2.131846786326649),
    (0.5, 7, 0.0),
])
def test_t_ppf_known_values(p: float, df: float, expected: float) -> None:
    assert stats.t_ppf(p, df) == pytest.approx(expected, abs=1e-9)


def test_t_with_infinite_df_is_the_normal() -> None:
    assert stats.t_ppf(0.95, math.inf) == pytest.approx(1.6448536269514722, abs=1e-12)
    assert stats.t_cdf(1.0, math.inf) == pytest.approx(0.8413447460685429, abs=1e-12)


@pytest.mark.parametrize(("a", "b", "x", "expected"), [
    (2, 3, 0.4, 0.5248),
    (0.5, 0.5, 0.2, 0.2951672353008665),
    (10, 2, 0.9, 0.6973568802),
    (0.3, 7, 0.01, 0.4874920509337249),
])
def test_betainc_known_values(a: float, b: float, x: float, expected: float) -> None:
    assert stats.betainc(a, b, x) == pytest.approx(expected, abs=1e-9)


def test_mean_and_sample_variance() -> None:
    assert stats.mean([1.0, 2.0, 3.0, 4.0, 5.0]) == 3.0
    assert stats.variance([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.5
    assert stats.variance([7.0]) == 0.0


# ---------------------------------------------------------------------------
# Welch's t


A = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
B = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_welch_against_scipy() -> None:
    d = stats.welch(A, B)
    assert d is not None
    assert d.estimate / d.se == pytest.approx(-2.455356398286006, abs=1e-12)
    assert d.df == pytest.approx(24.988529290231416, abs=1e-10)
    # ttest_ind(A, B, equal_var=False, alternative="greater").pvalue
    assert d.p_greater(0.0) == pytest.approx(0.9893109992685666, abs=1e-12)
    small = stats.welch([1, 2, 3, 4], [3, 5, 4, 6, 7])
    assert small is not None and small.df == pytest.approx(6.980769230769231, abs=1e-12)
    assert small.estimate / small.se == pytest.approx(-2.6111648393354674, abs=1e-12)


def test_welch_bounds_are_t_quantiles() -> None:
    d = stats.welch(A, B)
    assert d is not None
    margin = stats.t_ppf(0.95, d.df) * d.se
    assert d.lower(0.05) == pytest.approx(d.estimate - margin)
    assert d.upper(0.05) == pytest.approx(d.estimate + margin)


def test_welch_with_a_single_value_borrows_the_other_sides_variance() -> None:
    assert stats.welch([5.0], [1.0]) is None
    d = stats.welch([5.0], [1.0, 2.0, 3.0])
    assert d is not None and d.df == 2.0 and d.estimate == 3.0
    assert d.se == pytest.approx(math.sqrt(1.0 * (1 + 1 / 3)))


def test_welch_without_noise_is_exact() -> None:
    d = stats.welch([2.0, 2.0], [1.0, 1.0, 1.0])
    assert d is not None and d.se == 0.0
    assert d.lower(0.001) == d.upper(0.001) == 1.0
    assert d.p_greater(0.5) == 0.0 and d.p_greater(1.0) == 1.0


# ---------------------------------------------------------------------------
# Exactness and pooled noise


def test_identical_scores_have_exactly_no_spread() -> None:
    # fsum-based means of 0.1 repeated used to leave 1e-17 differences: sd 1.2e-16.
    for n in range(2, 40):
        assert stats.variance([0.1] * n) == 0.0 and stats.stdev([2.675] * n) == 0.0
        assert stats.mean([0.1] * n) == 0.1
    assert stats.variance([1e9 + 1, 1e9 + 3]) == 2.0  # no precision lost to the offset


def test_pool_adds_groups_within_their_own_means() -> None:
    pool = stats.Pool.of([1.0, 2.0, 3.0]) + stats.Pool.of([10.0, 12.0])
    assert (pool.ss, pool.df) == (4.0, 3) and pool.variance == pytest.approx(4 / 3)
    assert stats.Pool.of([5.0]).df == 0 and stats.Pool().variance is None


def test_z_of_t_keeps_the_tail() -> None:
    assert stats.z_of_t(0.0, 3) == 0.0
    assert stats.z_of_t(2.0, math.inf) == 2.0
    for t, df in [(2.0, 5), (-1.2, 3), (4.0, 30)]:
        tail = stats.t_cdf(-abs(t), df)
        assert stats.z_of_t(t, df) == pytest.approx(
            math.copysign(-stats.NormalDist().inv_cdf(tail), t), rel=1e-9)
    assert stats.z_of_t(1e12, 2) == 8.3 and stats.z_of_t(-1e12, 2) == -8.3


# ---------------------------------------------------------------------------
# judge: one look of the sequential test


def look(cand: list[float], base: list[float], *, final: bool = False, repeats: int = 5,
         m: float = 0.0, direction: str = "maximize", confidence: float = 0.95,
         noise: stats.Pool | None = None, effect: float | None = None) -> Any:
    return judge(cand, base, direction=direction, min_improvement=m, confidence=confidence,
                 repeats=repeats, final=final, noise=noise, effect=effect)


def test_boundaries_are_walds() -> None:
    keep, discard = boundaries(0.95)
    assert keep == pytest.approx(math.log(0.45 / 0.05))
    assert discard == pytest.approx(math.log(0.55 / 0.95))


def test_repeats_one_is_the_plain_comparison() -> None:
    plain = look([2.0], [1.0], repeats=1, final=True)
    assert (plain.state, plain.improvement, plain.interval) == ("keep", 1.0, None)
    assert plain.reason == ("score 2.0 beats baseline 1.0 by 1 (higher is better, "
                            "min_improvement 0)")
    assert look([1.0], [1.0], repeats=1, final=True).state == "discard"
    # Several stored baseline runs: their mean, still no test.
    assert look([1.05], [1.0, 1.2, 0.9], repeats=1, final=True).state == "keep"


def test_a_keep_needs_two_candidate_runs() -> None:
    noise = stats.Pool(ss=100.0, df=100)  # sd 1, well known
    assert look([9.0], [0.0] * 9, noise=noise).state == "more"
    kept = look([9.0, 9.1], [0.0] * 9, noise=noise)
    assert kept.state == "keep" and kept.reason.startswith("score 9.05 vs baseline 0.0: "
                                                            "beats it (improvement 9.05")
    assert "candidate 2 runs, baseline 9 runs; higher is better" in kept.reason


def test_clearly_worse_is_not_promising_after_one_run() -> None:
    noise = stats.Pool(ss=100.0, df=100)
    worse = look([-3.0], [0.0] * 6, noise=noise)
    assert worse.state == "discard" and worse.reason.startswith("not promising: score -3.0 "
                                                                "vs baseline 0.0 (")
    low, high = worse.interval
    assert low < -3.0 < high < 0.0


def test_a_close_call_is_inconclusive_only_at_the_cap() -> None:
    noise = stats.Pool(ss=100.0, df=100)
    cand, base = [0.6, 0.4, 0.5], [0.0] * 9
    assert look(cand, base, repeats=3, noise=noise).state == "more"
    last = look(cand, base, repeats=3, final=True, noise=noise)
    assert last.state == "discard" and last.reason.startswith("inconclusive: score ")
    assert "at this look keep above " in last.reason and ", discard below " in last.reason
    assert last.improvement == pytest.approx(0.5)


def test_the_boundaries_shown_are_the_ones_used() -> None:
    noise = stats.Pool(ss=100.0, df=100)
    base = [0.0] * 9
    last = look([0.5, 0.5], base, repeats=2, final=True, noise=noise)
    keep_at = float(last.reason.split("keep above ")[1].split(",")[0])
    discard_at = float(last.reason.split("discard below ")[1].split(" ")[0])
    assert look([keep_at + 0.01] * 2, base, noise=noise).state == "keep"
    assert look([keep_at - 0.01] * 2, base, noise=noise).state == "more"
    assert look([discard_at - 0.01] * 2, base, noise=noise).state == "discard"
    assert look([discard_at + 0.01] * 2, base, noise=noise).state == "more"


def test_min_improvement_effect_and_direction() -> None:
    noise = stats.Pool(ss=1.0, df=100)  # sd 0.1
    base = [10.0, 10.1, 9.9, 10.0, 10.05, 9.95]
    faster = [9.0, 9.1, 8.9]
    assert look(faster, base, direction="minimize", noise=noise).state == "keep"
    assert look(faster, base, direction="maximize", noise=noise).state == "discard"
    assert look(faster, base, direction="minimize", m=1.5, noise=noise).state == "discard"
    kept = look(faster, base, direction="minimize", noise=noise)
    assert kept.improvement == pytest.approx(1.0) and "lower is better" in kept.reason
    # The default effect: one noise standard deviation, pooled over every run (about 0.1).
    assert "(effect 0.098" in kept.reason
    # A stated effect changes the boundaries, not the estimate.
    big = look(faster, base, direction="minimize", noise=noise, effect=5.0)
    assert big.improvement == kept.improvement and "effect 5," in big.reason


def test_a_noisy_candidate_is_judged_by_its_own_noise() -> None:
    noise = stats.Pool(ss=1.0, df=100)  # sd 0.1
    base = [0.0] * 9
    steady = look([1.0, 1.0], base, noise=noise)
    wild = look([-1.0, 3.0], base, noise=noise)  # the same mean, sd 2.8
    assert steady.state == "keep" and wild.state == "more"


def test_no_noise_at_all_is_exact() -> None:
    assert look([2.0], [1.0, 1.0, 1.0]).state == "more"  # a keep needs a second run
    kept = look([2.0, 2.0], [1.0, 1.0, 1.0])
    assert kept.state == "keep" and kept.interval == (1.0, 1.0)
    worse = look([0.5], [1.0, 1.0, 1.0])
    assert worse.state == "discard" and "does not beat it" in worse.reason


def test_decide_uses_the_verdict_only_for_a_comparison() -> None:
    common: dict[str, Any] = {"direction": "maximize", "min_improvement": 0.0,
                              "constraints": (), "metrics": {}, "keep_when_no_baseline": True}
    noise = stats.Pool(ss=1.0, df=100)
    verdict = look([0.11, 0.09], [0.0] * 6, repeats=2, final=True, noise=noise)
    d = decide(score=0.1, baseline=0.0, has_change=True, verdict=verdict, **common)
    assert d.status == "discard" and d.reason.startswith("inconclusive")
    assert decide(score=1.2, baseline=1.0, has_change=True, **common).status == "keep"
    assert decide(score=1.2, baseline=1.0, has_change=False, verdict=verdict,
                  **common).reason == "candidate has no change"
    assert decide(score=1.2, baseline=None, has_change=True, verdict=verdict,
                  **common).reason == "no baseline available"


# ---------------------------------------------------------------------------
# plan and measure, with a stand-in evaluator


@pytest.fixture
def make_task(tmp_path: Path) -> Any:
    def make(**policy: Any) -> Any:
        pol = {"min_improvement": 0.0, **policy}
        text = (
            "id: t\ndescription: d\nartifacts: {include: [a.md]}\nmutation: {}\n"
            "mutator: {command: 'true'}\nrunner: {command: 'true'}\nscorer: {command: 'true'}\n"
            "objective: {}\nconstraints: []\n"
            f"policy: {pol!r}\nbudget: {{}}\nlogging: {{}}\n".replace("'", '"')
            .replace('"true"', "'true'")
        )
        path = tmp_path / "task.yaml"
        path.write_text(text)
        return load_task(path, tmp_path)
    return make


class Fake:
    """Scores from a script per side; records the order."""

    def __init__(self, baseline: list[float], candidate: list[float]) -> None:
        self.scores = {"baseline": list(baseline), "candidate": list(candidate)}
        self.order: list[str] = []
        self.longest = 1.0

    def __call__(self, side: str) -> Sample:
        self.order.append(side[0].upper())
        return Sample(self.scores[side].pop(0), {})


def run(task: Any, fake: Fake, how: Plan, has_change: bool = True,
        time_left: float = math.inf) -> Measurement:
    m = Measurement(baseline=list(how.stored))
    measure(task, fake, how, m, has_change=has_change, time_left=lambda: time_left)
    return m


def stored(scores: tuple[float, ...] = (), fp: str | None = "fp", score: float = 1.0) -> Baseline:
    return Baseline(score=score, artifacts="x", run_id="r", fingerprint=fp, scores=scores)


def test_plan(make_task: Any) -> None:
    one, five = make_task(), make_task(repeats=5)
    # No stored baseline: the main tree's artifacts are measured, unless one is missing.
    assert plan(one, None, "fp").source == "remeasured"
    assert plan(one, None, "fp", ["a.md"]) == Plan(
        "none", why="a.md does not exist yet, so there is no baseline to measure")
    assert plan(one, stored(), "fp") == Plan("stored", (1.0,))
    assert plan(five, stored((1.0, 2.0)), "fp") == Plan("stored", (1.0, 2.0))
    assert plan(one, stored(fp="old"), "fp").source == "remeasured"
    assert plan(one, stored(fp=None), "fp").source == "remeasured"
    assert plan(five, stored(), "fp").source == "remeasured"  # only a keep's own score
    again = make_task(remeasure_baseline=True)
    assert plan(again, stored(), "fp").source == "remeasured"
    assert plan(again, None, "fp").source == "remeasured"


def test_missing_artifacts(make_task: Any) -> None:
    task = make_task()
    assert missing_artifacts(task, {}) == ["a.md"]
    assert missing_artifacts(task, {"a.md": "file:x"}) == []


def test_measure_puts_the_baseline_first_and_sizes_it(make_task: Any) -> None:
    task = make_task(repeats=4)  # up to 3 baseline runs per candidate run, capped at 6
    fake = Fake([1.0] * 20, [1.0, 1.1, 0.9, 1.0])
    m = run(task, fake, Plan("remeasured"))
    assert m.order == ["B", "B", "B", "C", "B", "B", "B", "C", "C", "C"][:len(m.order)]
    assert m.order[:4] == ["B", "B", "B", "C"]
    assert len(m.baseline) <= 6 and m.runs == len(m.order) and m.fresh == len(m.baseline)


def test_measure_tops_up_the_stored_baseline(make_task: Any) -> None:
    task = make_task(repeats=2)  # the baseline grows to 3 runs (1.5 x 2)
    fake = Fake([1.0], [1.1, 1.1])
    m = run(task, fake, Plan("stored", (1.1, 0.9)))
    assert m.order[:2] == ["B", "C"] and m.baseline[:3] == [1.1, 0.9, 1.0] and m.fresh == 1
    full = run(task, Fake([], [1.05, 1.06]), Plan("stored", (1.0, 1.1, 1.2)))
    assert full.order[0] == "C" and full.fresh == 0


def test_remeasure_alternates(make_task: Any) -> None:
    task = make_task(repeats=5, remeasure_baseline=True)
    fake = Fake([1.0] * 5, [2.0] * 5)
    m = run(task, fake, Plan("remeasured"))
    assert m.order == ["B", "C", "B", "C"] and m.look.state == "keep"
    assert (m.baseline, m.candidate, m.fresh, m.runs) == ([1.0, 1.0], [2.0, 2.0], 2, 4)


def test_measure_stops_for_the_budget(make_task: Any) -> None:
    task = make_task(repeats=5)
    fake = Fake([1.0] * 10, [1.0, 1.05, 1.1])
    m = run(task, fake, Plan("stored", (1.0, 1.1, 0.9, 1.0, 1.05)), time_left=1.0)
    assert m.order == ["B", "B", "C"][-len(m.order):] and m.look.state == "discard"
    assert m.look.reason.startswith("inconclusive")


def test_measure_alone(make_task: Any) -> None:
    task = make_task(repeats=3)
    assert run(task, Fake([], [1.0] * 3), Plan("none")).candidate == [1.0] * 3
    assert run(task, Fake([], [1.0]), Plan("stored", (1.0,)), has_change=False).candidate == [1.0]
    # Unchanged and nothing stored: the baseline, measured as a first candidate run needs.
    same = run(make_task(repeats=5), Fake([], [1.0] * 3), Plan("remeasured"), has_change=False)
    assert same.baseline == [1.0] * 3 and same.fresh == 3 and same.order == ["C"] * 3
    refused = make_task(repeats=3, keep_when_no_baseline=False)
    assert run(refused, Fake([], [1.0]), Plan("none")).candidate == [1.0]


def test_mean_metrics() -> None:
    runs = [{"ms": 40.1, "name": "a", "ok": True}, {"ms": 19.9, "name": "b", "ok": False}]
    assert mean_metrics(runs) == {"ms": 30.0, "name": "b", "ok": False}
    assert mean_metrics(runs[:1]) == runs[0] and mean_metrics([]) == {}
    assert mean_metrics([{"n": 1}, {"m": 2}]) == {"m": 2}


def test_new_baseline(make_task: Any) -> None:
    kept = Measurement(candidate=[2.0, 2.2], baseline=[1.0])
    assert new_baseline(kept, Plan("stored", (1.0,)), kept=True, has_change=True) == (2.1, ())
    assert new_baseline(kept, Plan("none"), kept=True, has_change=True) == (2.1, (2.0, 2.2))
    fresh = Measurement(candidate=[0.5], baseline=[1.0, 1.2], fresh=1)
    assert new_baseline(fresh, Plan("stored", (1.0,)), kept=False,
                        has_change=True) == (1.1, (1.0, 1.2))
    nothing = Measurement(candidate=[0.5], baseline=[1.0])
    assert new_baseline(nothing, Plan("stored", (1.0,)), kept=False, has_change=True) is None
