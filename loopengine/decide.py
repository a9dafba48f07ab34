"""A pure function: scores, constraints, policy -> keep / discard and why.

With one measurement on each side, a keep needs the score to beat the baseline by more
than ``min_improvement``.  With more (``policy.repeats``, ``policy.remeasure_baseline``),
:func:`judge` looks at the measurements after each one and answers keep, discard or
"measure again"; see the README's "Trustworthy verdicts" for the test and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loopengine import stats
from loopengine.task import Constraint

# The share of 1 - confidence spent on keeps before the last look (Haybittle-Peto style):
# early keeps need overwhelming evidence, and the last look keeps nearly all its power.
EARLY_SHARE = 0.1


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
# Repeated measurement: one look at the scores so far


@dataclass(frozen=True)
class Look:
    """What the measurements so far say: ``keep``, ``discard`` or ``more`` (measure again).

    ``interval`` is ``(lower, upper)``: a keep needs ``lower > min_improvement``, a clear
    discard ``upper <= min_improvement``; None when the noise cannot be estimated yet.
    """

    state: str
    reason: str
    improvement: float
    interval: tuple[float, float] | None = None


def keep_alpha(confidence: float, repeats: int, final: bool) -> float:
    """The one-sided error level of a keep at one look; summed over the looks, at most
    ``1 - confidence`` (Bonferroni), whatever the look at which the candidate stops.

    Keeps are possible from the second candidate measurement on, so ``repeats - 2`` looks
    come before the last one; they share ``EARLY_SHARE`` of the error level.
    """
    alpha = 1.0 - confidence
    early = max(repeats - 2, 0)
    if early == 0:
        return alpha
    return (1.0 - EARLY_SHARE) * alpha if final else EARLY_SHARE * alpha / early


def judge(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    direction: str,
    min_improvement: float,
    confidence: float,
    repeats: int,
    final: bool,
) -> Look:
    """Keep, discard or measure again, from every score measured so far.

    One-sided Welch test of "the improvement is at most ``min_improvement``".  A keep
    needs at least two candidate measurements when ``repeats`` allows them; a clear
    discard (the upper bound at ``confidence`` is no better than ``min_improvement``)
    may come after one.  At the last look, anything else is an inconclusive discard.
    """
    sign = 1.0 if direction == "maximize" else -1.0
    cand, base = [sign * x for x in candidate], [sign * x for x in baseline]
    word = "higher" if direction == "maximize" else "lower"
    m = min_improvement
    counted = _counted(len(candidate), len(baseline))
    diff = stats.welch(cand, base)
    if diff is None:  # one measurement a side: no noise estimate, the plain comparison
        delta = stats.mean(cand) - stats.mean(base)
        if not final:
            return Look("more", "the noise cannot be estimated from one measurement", delta)
        return Look(*compare(candidate[0], baseline[0], direction, m), delta)
    lower = diff.lower(keep_alpha(confidence, repeats, final))
    upper = diff.upper(1.0 - confidence)
    shown = (lower, upper)
    first = f"score {fmt(stats.mean(candidate))} vs baseline {fmt(stats.mean(baseline))}"
    tail = (f"improvement {diff.estimate:.6g}, interval [{lower:.6g}, {upper:.6g}], "
            f"min_improvement {m:g}, confidence {confidence:g}, {counted}; "
            f"{word} is better")
    if lower > m and (len(candidate) >= 2 or repeats == 1):
        return Look("keep", f"{first}: beats it ({tail})", diff.estimate, shown)
    if upper <= m:
        return Look("discard", f"{first}: does not beat it ({tail})", diff.estimate, shown)
    if not final:
        return Look("more", f"{first}: not clear yet ({tail})", diff.estimate, shown)
    return Look("discard", f"inconclusive: {first} ({tail})", diff.estimate, shown)


def _counted(nc: int, nb: int) -> str:
    def runs(n: int) -> str:
        return f"{n} run" if n == 1 else f"{n} runs"

    return f"candidate {runs(nc)}, baseline {runs(nb)}"
