"""A pure function: scores, constraints, policy -> keep / discard and why."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
            return Decision(
                "crash", f"constraint metric {c.metric!r} is missing from the scorer's metrics",
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
) -> Decision:
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
    delta = improvement(score, baseline, direction)
    word = "higher" if direction == "maximize" else "lower"
    if delta > min_improvement:
        return Decision(
            "keep",
            f"score {fmt(score)} beats baseline {fmt(baseline)} by {delta:.6g} "
            f"({word} is better, min_improvement {min_improvement:g})",
        )
    return Decision(
        "discard",
        f"score {fmt(score)} does not beat baseline {fmt(baseline)} by more than "
        f"min_improvement {min_improvement:g} ({word} is better)",
    )
