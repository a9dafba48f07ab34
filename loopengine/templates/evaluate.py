"""The runner: check the notes against the rubric and write the verdicts as JSON.

    python3 evaluate.py --artifact notes.md --rubric rubric.json --output run.json

A low score is a finding, not an error: the exit status is 0 whenever the notes could be
read, and 1 (with the reason on stderr) when they could not.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def sections(text: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^##\s+(.+)$", text, re.MULTILINE)}


def findings(text: str, rubric: dict) -> dict:
    present = sections(text)
    checks = [{"id": f"section:{name}", "passed": name in present}
              for name in rubric["required_sections"]]
    return {"checks": checks, "words": len(text.split())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="the notes to check")
    parser.add_argument("--rubric", required=True, help="the rubric (JSON)")
    parser.add_argument("--output", required=True, help="where to write the findings")
    args = parser.parse_args()
    try:
        text = Path(args.artifact).read_text(encoding="utf-8")
        rubric = json.loads(Path(args.rubric).read_text(encoding="utf-8"))
        report = findings(text, rubric)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except (OSError, ValueError, KeyError) as error:
        print(f"evaluate.py: {error}", file=sys.stderr)
        return 1
    passed = sum(check["passed"] for check in report["checks"])
    print(f"{args.artifact}: {passed}/{len(report['checks'])} checks pass", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
