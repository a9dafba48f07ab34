"""Read the scorer's stdout: exactly one JSON object with a finite numeric score."""

from __future__ import annotations

import json
import math
from typing import Any

from loopengine.errors import LoopError
from loopengine.task import Parse

# Integers beyond this cannot be held exactly by a float; a score that large is a bug.
MAX_INT = 2**53


class ScoreError(LoopError):
    crash_kind = "scorer"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ScoreError(f"the scorer's JSON has the key {key!r} twice")
        data[key] = value
    return data


def _no_constant(name: str) -> Any:
    raise ScoreError(f"the scorer's JSON contains {name}, which is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ScoreError(f"the scorer's JSON contains {text}, which overflows to infinity")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16 or abs(int(text)) > MAX_INT:
        raise ScoreError(f"the scorer's JSON contains the integer {text[:40]}, too large")
    return int(text)


def parse_output(stdout: str, parse: Parse) -> tuple[float, dict[str, Any]]:
    """The score and the metrics, or a ``ScoreError`` that says what is wrong."""
    text = stdout.strip()
    if not text:
        raise ScoreError("the scorer printed nothing; it must print one JSON object")
    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        first = text.splitlines()[0][:120]
        raise ScoreError(
            f"the scorer's output is not one JSON object ({exc.args[0]}); it begins {first!r}"
        ) from exc
    if not isinstance(data, dict):
        raise ScoreError(f"the scorer printed JSON {type(data).__name__}, not an object")
    score = _lookup(data, parse.score_field)
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise ScoreError(
            f"score field {parse.score_field!r} is {_kind(score)}, not a number"
        )
    metrics: dict[str, Any] = {}
    if parse.metrics_field:
        found = _lookup(data, parse.metrics_field, missing_ok=True)
        if found is not None:
            if not isinstance(found, dict):
                raise ScoreError(
                    f"metrics field {parse.metrics_field!r} is {_kind(found)}, not an object"
                )
            metrics = found
    return float(score), metrics


_MISSING = object()


def _lookup(data: dict[str, Any], dotted: str, missing_ok: bool = False) -> Any:
    current: Any = data
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            if missing_ok:
                return None
            raise ScoreError(f"the scorer's JSON has no field {dotted!r}")
        current = current[part]
    return current


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a bool ({str(value).lower()})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return f"a {type(value).__name__}"
