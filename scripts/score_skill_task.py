"""The sample task's scorer: turn the evaluator's findings into one JSON score.

    python score_skill_task.py --input work/skill-run.json

stdout is exactly one JSON object, ``{"score": <points>, "metrics": {...}}``, and nothing
else; any problem goes to stderr with exit status 1.  The weights come from the rubric,
not from the findings file, so a findings file from another rubric is refused rather
than scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# The engine diffs the whole sandbox; a __pycache__ beside the scripts is not ours to add.
sys.dont_write_bytecode = True

import skill_rubric as rubric  # noqa: E402


class FindingsError(Exception):
    pass


def _reject_constant(name: str) -> float:
    raise FindingsError(f"not valid JSON: {name} is not a number")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise FindingsError(f"duplicate key(s) {', '.join(duplicates)}")
    return dict(pairs)


def load_findings(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FindingsError(f"{path}: no such file (did the runner run?)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FindingsError(f"{path}: cannot read: {error}") from None
    try:
        data = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except json.JSONDecodeError as error:
        raise FindingsError(f"{path}: not valid JSON: {error}") from None
    except FindingsError as error:
        raise FindingsError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise FindingsError(f"{path}: the findings must be a JSON object")
    return data


def score(findings: dict[str, object]) -> dict[str, object]:
    checks = findings.get("checks")
    if not isinstance(checks, list) or not all(isinstance(check, dict) for check in checks):
        raise FindingsError("'checks' must be a list of objects")
    verdicts: dict[str, bool] = {}
    for position, check in enumerate(checks):
        check_id, passed = check.get("id"), check.get("passed")
        if check_id not in rubric.CHECKS_BY_ID:
            raise FindingsError(f"checks[{position}]: unknown check id {check_id!r}")
        if not isinstance(passed, bool):
            raise FindingsError(f"checks[{position}] ({check_id}): 'passed' must be true/false")
        if check_id in verdicts:
            raise FindingsError(f"checks[{position}]: check {check_id!r} appears twice")
        verdicts[check_id] = passed
    missing = [check.id for check in rubric.RUBRIC if check.id not in verdicts]
    if missing:
        raise FindingsError(f"no verdict for check(s) {', '.join(missing)}")
    points = sum(check.weight for check in rubric.RUBRIC if verdicts[check.id])
    metrics: dict[str, object] = {
        "checks_passed": sum(verdicts.values()),
        "checks_total": len(rubric.RUBRIC),
        "max_score": float(rubric.MAX_SCORE),
        "failed": [check.id for check in rubric.RUBRIC if not verdicts[check.id]],
    }
    lines = findings.get("lines")
    if isinstance(lines, int) and not isinstance(lines, bool):
        metrics["lines"] = lines
    return {"score": float(points), "metrics": metrics}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score the findings of evaluate_skill_task.")
    parser.add_argument("--input", required=True, help="the findings file (JSON)")
    args = parser.parse_args(argv)
    try:
        findings = load_findings(Path(args.input))
        result = score(findings)
    except FindingsError as error:
        where = "" if str(error).startswith(args.input) else f"{args.input}: "
        print(f"score_skill_task: {where}{error}", file=sys.stderr)
        return 1
    print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
