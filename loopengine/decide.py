"""A pure function: scores, constraints, policy -> keep / discard and why.

With ``repeats: 1``, a keep needs the score to beat the baseline by more than
``min_improvement``.  With more, :func:`judge` looks at the measurements after each one and
answers keep, discard or "measure again" (a sequential probability ratio test); see
docs/verdicts.md for the test and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loopengine import stats
from loopengine.task import Constraint


@dataclass(frozen=True)
class Decision:
    status: str  # "keep" | "discard" | "crash"
    reason: str
    crash_kind: str | None = None
    violations: list[dict[str, Any]] = field(default_factory=list)


def fmt(value: float | None) -> str:
    """A score as people and commit subjects show it (``4.0``, ``0.125``)."""
    if value is None:
        return "none"
    return repr(float(value))


def improvement(score: float, baseline: float, direction: str) -> float:
    """How much better ``score`` is than ``baseline``: positive is better."""
    return score - baseline if direction == "maximize" else baseline - score


def check_constraints(
    constraints: Sequence[Constraint], metrics: Mapping[str, Any]
) -> Decision | None:
    """A crash for a missing or non-numeric metric, a discard for a broken bound."""
    violations: list[dict[str, Any]] = []
    for c in constraints:
        if c.metric not in metrics:
            have = ", ".join(map(repr, sorted(metrics))) or "none"
            return Decision(
                "crash", f"constraint metric {c.metric!r} is missing from the scorer's metrics "
                f"(it has: {have})",
                crash_kind="scorer",
            )
        value = metrics[c.metric]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            return Decision(
                "crash", f"constraint metric {c.metric!r} is not a finite number: {value!r}",
                crash_kind="scorer",
            )
        if c.max is not None and value > c.max:
            violations.append({"rule": "constraint.max", "path": c.metric, "limit": c.max,
                               "actual": value})
        if c.min is not None and value < c.min:
            violations.append({"rule": "constraint.min", "path": c.metric, "limit": c.min,
                               "actual": value})
    if not violations:
        return None
    first = violations[0]
    op = ">" if first["rule"] == "constraint.max" else "<"
    bound = "max" if op == ">" else "min"
    reason = (f"constraint violated: {first['path']} = {first['actual']} {op} "
              f"{bound} {first['limit']}")
    if len(violations) > 1:
        reason += f" (and {len(violations) - 1} more)"
    return Decision("discard", reason, violations=violations)


def decide(
    *,
    score: float,
    baseline: float | None,
    direction: str,
    min_improvement: float,
    constraints: Sequence[Constraint],
    metrics: Mapping[str, Any],
    has_change: bool,
    keep_when_no_baseline: bool,
    verdict: Look | None = None,
) -> Decision:
    """``score`` and ``baseline`` are means; ``verdict`` is :func:`judge`'s last look."""
    broken = check_constraints(constraints, metrics)
    if broken is not None:
        return broken
    if baseline is None:
        if keep_when_no_baseline:
            return Decision("keep", "no baseline available")
        if not has_change:
            return Decision("discard", "no baseline available; the unchanged artifacts "
                            f"scored {fmt(score)}, now the baseline")
        return Decision("discard", "no baseline available and policy.keep_when_no_baseline "
                        "is false")
    if not has_change:
        return Decision("discard", "candidate has no change")
    if verdict is not None and verdict.state != "more":
        return Decision(verdict.state, verdict.reason)
    return Decision(*compare(score, baseline, direction, min_improvement))


def compare(score: float, baseline: float, direction: str,
            min_improvement: float) -> tuple[str, str]:
    """One measurement a side: keep when better by more than ``min_improvement``."""
    delta = improvement(score, baseline, direction)
    word = "higher" if direction == "maximize" else "lower"
    if delta > min_improvement:
        return "keep", (f"score {fmt(score)} beats baseline {fmt(baseline)} by {delta:.6g} "
                        f"({word} is better, min_improvement {min_improvement:g})")
    return "discard", (f"score {fmt(score)} does not beat baseline {fmt(baseline)} by more "
                       f"than min_improvement {min_improvement:g} ({word} is better)")


# ---------------------------------------------------------------------------
# Repeated measurement: a sequential probability ratio test, one look at a time


@dataclass(frozen=True)
class Look:
    """What the measurements so far say: ``keep``, ``discard`` or ``more`` (measure again).

    ``interval`` is ``(lower, upper)``, the improvement's one-sided confidence bounds at
    ``confidence``; None when the noise cannot be estimated yet.
    """

    state: str
    reason: str
    improvement: float
    interval: tuple[float, float] | None = None


def boundaries(confidence: float) -> tuple[float, float]:
    """Wald's boundaries on the log likelihood ratio: keep at ``log((1 - MISS) / alpha)``,
    discard early at ``log(MISS / (1 - alpha))``, with ``alpha = 1 - confidence``.

    Wald's inequality bounds the false keeps of an uncapped test by ``alpha / (1 - MISS)``;
    the cap (an inconclusive discard) and the overshoot of the discrete looks keep the
    real rate well under ``alpha`` (tests/test_sequential.py simulates it).
    """
    alpha = 1.0 - confidence
    return math.log((1.0 - MISS) / alpha), math.log(MISS / (1.0 - alpha))


# Wald's beta: the share of true improvements of the design effect that an uncapped test
# would discard early.  It trades the runs spent on candidates that are no improvement
# against power; 0.55 was chosen by simulation (docs/verdicts.md).
MISS = 0.55


def judge(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    direction: str,
    min_improvement: float,
    confidence: float,
    repeats: int,
    final: bool,
    noise: stats.Pool | None = None,
    effect: float | None = None,
) -> Look:
    """Keep, discard or measure again, from every score measured so far.

    ``repeats: 1`` is the plain comparison of the means.  Above it, a sequential
    probability ratio test of "the improvement is ``min_improvement``" against "it is
    ``min_improvement + effect``" on the difference of the means, with the noise pooled
    over ``noise`` (earlier groups of the same evaluation) and both sides' own runs; from
    the candidate's second run on, its own variance when that is larger.  The statistic is
    Student's t, mapped onto the normal scale (:func:`stats.z_of_t`), where the likelihood
    ratio of a known noise applies.  A keep needs two candidate runs; at the last look,
    anything short of a boundary is an inconclusive discard.
    """
    sign = 1.0 if direction == "maximize" else -1.0
    cand, base = [sign * x for x in candidate], [sign * x for x in baseline]
    m = min_improvement
    delta = stats.mean(cand) - stats.mean(base)
    if repeats == 1:
        if not final:
            return Look("more", "one run a side", delta)
        return Look(*compare(stats.mean(candidate), stats.mean(baseline), direction, m),
                    delta)
    text = _Text(candidate, baseline, direction, m, confidence)
    pooled = (noise or stats.Pool()) + stats.Pool.of(cand) + stats.Pool.of(base)
    var = pooled.variance
    df = float(pooled.df)
    if var is not None and len(cand) >= 2 and stats.variance(cand) > var:
        # A candidate noisier than the evaluation is judged by its own noise.  The degrees
        # of freedom stay the pool's: taking the larger variance is already the caution.
        var = stats.variance(cand)
    if var is None:
        if not final:
            return Look("more", "the noise cannot be estimated yet", delta)
        return Look("discard", f"inconclusive: {text.first}: the noise cannot be estimated "
                    f"from one run a side ({text.counted})", delta)
    se = math.sqrt(var * (1.0 / len(cand) + 1.0 / len(base)))
    if se == 0.0:
        return _exact(delta, text, final, len(cand))
    size = effect if effect is not None and effect > 0 else math.sqrt(
        pooled.variance if pooled.variance else var)
    lam = size / se
    z = stats.z_of_t((delta - m) / se, df)
    upper, lower = boundaries(confidence)
    state = sequential(z, lam, len(cand), confidence)
    if state == "more" and final:
        state = "discard"
    if state == "more":
        return Look("more", f"{text.first}: not clear yet", delta)
    margin = stats.t_ppf(confidence, df) * se
    interval = (delta - margin, delta + margin)
    keep_at = m + _t_of_z(upper / lam + lam / 2.0, df) * se
    discard_at = m + _t_of_z(lower / lam + lam / 2.0, df) * se
    detail = (f"improvement {delta:.6g}, interval [{interval[0]:.6g}, {interval[1]:.6g}]; "
              f"at this look keep above {keep_at:.6g}, discard below {discard_at:.6g} "
              f"(effect {size:.6g}, noise sd {math.sqrt(var):.6g}, min_improvement {m:g}, "
              f"confidence {confidence:g}); {text.counted}; {text.word} is better")
    if state == "keep":
        return Look("keep", f"{text.first}: beats it ({detail})", delta, interval)
    if lam * z - lam * lam / 2.0 <= lower:
        return Look("discard", f"not promising: {text.first} ({detail})", delta, interval)
    return Look("discard", f"inconclusive: {text.first} ({detail})", delta, interval)


def sequential(z: float, lam: float, runs: int, confidence: float) -> str:
    """One look of the test on the normal scale: ``z`` is the improvement beyond
    ``min_improvement`` in standard errors, ``lam`` the design effect in standard errors.
    ``keep`` (from the candidate's second run on), ``discard`` or ``more``."""
    llr = lam * z - lam * lam / 2.0  # log likelihood ratio of "effect" against "none"
    upper, lower = boundaries(confidence)
    if llr >= upper and runs >= 2:
        return "keep"
    if llr <= lower:
        return "discard"
    return "more"


def _exact(delta: float, text: _Text, final: bool, runs: int) -> Look:
    """No noise at all: every run of each side gave the same score."""
    m = text.m
    detail = (f"improvement {delta:.6g}, no noise in any run, min_improvement {m:g}; "
              f"{text.counted}; {text.word} is better")
    if delta <= m:
        return Look("discard", f"{text.first}: does not beat it ({detail})", delta,
                    (delta, delta))
    if runs >= 2:
        return Look("keep", f"{text.first}: beats it ({detail})", delta, (delta, delta))
    if not final:
        return Look("more", f"{text.first}: a keep needs a second run", delta)
    return Look("discard", f"inconclusive: {text.first} (a keep needs a second run; {detail})",
                delta, (delta, delta))


def _t_of_z(z: float, df: float) -> float:
    """The inverse of :func:`stats.z_of_t` (for the boundaries shown in a reason)."""
    if math.isinf(df) or z == 0.0:
        return z
    # |t| >= |z|: Student's tails are heavier.  Widen until the bracket holds, then halve.
    low, high = (z, 2.0 * z) if z > 0 else (2.0 * z, z)
    while stats.z_of_t(high, df) < z and high < 1e9:
        high = 2.0 * high if high > 0 else high / 2.0
    while stats.z_of_t(low, df) > z and low > -1e9:
        low = 2.0 * low if low < 0 else low / 2.0
    for _ in range(60):
        mid = (low + high) / 2.0
        if stats.z_of_t(mid, df) < z:
            low = mid
        else:
            high = mid
        if high - low <= 1e-7 * max(1e-3, abs(high)):
            break
    return (low + high) / 2.0


class _Text:
    """The parts every reason of a look shares."""

    def __init__(self, candidate: Sequence[float], baseline: Sequence[float], direction: str,
                 m: float, confidence: float) -> None:
        self.m = m
        self.word = "higher" if direction == "maximize" else "lower"
        self.first = (f"score {fmt(stats.mean(candidate))} vs baseline "
                      f"{fmt(stats.mean(baseline))}")
        self.counted = _counted(len(candidate), len(baseline))


def _counted(nc: int, nb: int) -> str:
    def runs(n: int) -> str:
        return f"{n} run" if n == 1 else f"{n} runs"

    return f"candidate {runs(nc)}, baseline {runs(nb)}"
