"""The scorer: turn the runner's findings into exactly one JSON object on stdout.

    python3 score.py --input run.json
    {"score": 3, "metrics": {"checks_passed": 3, "checks_total": 5, "words": 42}}

Anything else goes to stderr; a problem exits 1, which the engine records as a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="the runner's findings (JSON)")
    args = parser.parse_args()
    try:
        report = json.loads(Path(args.input).read_text(encoding="utf-8"))
        checks = report["checks"]
        passed = sum(1 for check in checks if check["passed"] is True)
        metrics = {"checks_passed": passed, "checks_total": len(checks),
                   "words": int(report["words"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"score.py: cannot read the findings in {args.input}: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"score": passed, "metrics": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
