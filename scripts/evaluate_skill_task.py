"""The sample task's runner: evaluate a SKILL.md against the rubric and write findings.

    python evaluate_skill_task.py --task-dir . --artifact fixtures/SKILL.md \\
        --output ../../work/skill-run.json

The findings file holds every check with its verdict and a detail a person can act on:
``{"artifact", "checks": [{"id", "description", "passed", "weight", "detail"}], "passed",
"total", "lines"}``.  A low score is a finding, not an error: the exit status is 0
whenever the artifact could be read, and 1 (with the reason on stderr) when it could not.
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


def findings(artifact: str, text: str) -> dict[str, object]:
    results = rubric.evaluate(text)
    return {
        "artifact": artifact,
        "checks": [result.as_json() for result in results],
        "passed": sum(result.passed for result in results),
        "total": len(results),
        "lines": rubric.line_count(text),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a SKILL.md against the rubric.")
    parser.add_argument("--task-dir", required=True, help="the task folder")
    parser.add_argument("--artifact", required=True, help="the SKILL.md, relative to it")
    parser.add_argument("--output", required=True, help="where to write the findings (JSON)")
    args = parser.parse_args(argv)
    try:
        path = rubric.resolve_artifact(args.task_dir, args.artifact)
        report = findings(args.artifact, rubric.read_artifact(path))
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except (ValueError, OSError) as error:
        print(f"evaluate_skill_task: {error}", file=sys.stderr)
        return 1
    print(f"{args.artifact}: {report['passed']}/{report['total']} checks pass", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
