"""A task's campaign, read from its records: the points, cards and keeps of the report."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    """One run, as the chart shows it."""

    index: int  # 1-based position in start order
    run_id: str
    status: str
    score: float | None
    crash_kind: str | None
    interval: tuple[float, float] | None  # the candidate's score range the verdict used
    fingerprint: str | None


@dataclass(frozen=True)
class Keep:
    index: int
    run_id: str
    commit: str | None
    score: float | None
    baseline: float | None
    delta: float | None
    reason: str
    started_at: str


@dataclass(frozen=True)
class Campaign:
    task_id: str
    direction: str  # "maximize" | "minimize"
    points: list[Point]
    keeps: list[Keep]
    start_score: float | None
    best_score: float | None
    runs: int
    crashes: dict[str, int]
    discards: int
    wall_seconds: float
    first_started: str | None
    last_started: str | None
    fingerprint_changes: list[int] = field(default_factory=list)  # index of the first run after

    @property
    def crash_count(self) -> int:
        return sum(self.crashes.values())

    def best_so_far(self) -> list[tuple[int, float]]:
        """``(index, best)`` steps: the start score, then each keep that bettered it."""
        steps: list[tuple[int, float]] = []
        best = self.start_score
        if best is not None:
            steps.append((0, best))
        for keep in self.keeps:
            if keep.score is None:
                continue
            if best is None or self._better(keep.score, best):
                best = keep.score
                steps.append((keep.index, best))
        return steps

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


def campaign(task_id: str, direction: str, records: list[dict[str, Any]]) -> Campaign:
    """The campaign of ``records`` (one task's, in start order)."""
    points: list[Point] = []
    keeps: list[Keep] = []
    changes: list[int] = []
    last_print: str | None = None
    for i, record in enumerate(records, start=1):
        status = str(record.get("status"))
        score = number(record.get("candidate_score"))
        printed = record.get("fingerprint") if isinstance(record.get("fingerprint"), str) else None
        if printed is not None:
            if last_print is not None and printed != last_print:
                changes.append(i)
            last_print = printed
        points.append(Point(i, str(record.get("run_id")), status, score,
                            str(record.get("crash_kind") or "unknown") if status == "crash"
                            else None, _interval(record, score, direction), printed))
        if status == "keep":
            base = number(record.get("baseline_score"))
            delta = None if score is None or base is None else float(f"{score - base:.12g}")
            keeps.append(Keep(i, str(record.get("run_id")), _str(record.get("commit")), score,
                              base, delta, str(record.get("reason") or ""),
                              str(record.get("started_at") or "")))
    kept = [k.score for k in keeps if k.score is not None]
    start = _start(records)
    scored = ([start] if start is not None else []) + kept
    best = (min(scored) if direction == "minimize" else max(scored)) if scored else None
    crashes = Counter(p.crash_kind or "unknown" for p in points if p.status == "crash")
    wall = sum(d for d in (number(r.get("duration_seconds")) for r in records) if d is not None)
    return Campaign(
        task_id=task_id, direction=direction, points=points, keeps=keeps, start_score=start,
        best_score=best, runs=len(records), crashes=dict(sorted(crashes.items())),
        discards=sum(1 for p in points if p.status == "discard"), wall_seconds=wall,
        first_started=_str(records[0].get("started_at")) if records else None,
        last_started=_str(records[-1].get("started_at")) if records else None,
        fingerprint_changes=changes,
    )


def _start(records: list[dict[str, Any]]) -> float | None:
    """The first baseline a candidate was held against; else the first keep's score (a keep
    with no baseline to beat started the campaign)."""
    for record in records:
        base = number(record.get("baseline_score"))
        if base is not None:
            return base
        if record.get("status") == "keep" and number(record.get("candidate_score")) is not None:
            return number(record.get("candidate_score"))
    return None


def _interval(record: dict[str, Any], score: float | None,
              direction: str) -> tuple[float, float] | None:
    """The record's ``interval`` (bounds of the improvement) as a range of the score."""
    bounds, delta = record.get("interval"), number(record.get("improvement"))
    if score is None or delta is None or not isinstance(bounds, list) or len(bounds) != 2:
        return None
    low, high = number(bounds[0]), number(bounds[1])
    if low is None or high is None:
        return None
    if direction == "minimize":  # improvement = baseline - score
        return score - (high - delta), score + (delta - low)
    return score - (delta - low), score + (high - delta)


def number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
