"""The mutator: make one candidate by adding the first section the rubric misses.

    python3 mutate.py --artifact notes.md --rubric rubric.json

It runs in the sandbox, and changes nothing when every section is there (the engine then
discards the candidate: "candidate has no change").  Deterministic on purpose: the same
notes give the same candidate.  Replace it with your own idea of a better artifact, or
write the change yourself and hand it in with `loopengine run --patch FILE`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="the notes to improve")
    parser.add_argument("--rubric", required=True, help="the rubric (JSON)")
    args = parser.parse_args()
    path = Path(args.artifact)
    text = path.read_text(encoding="utf-8")
    rubric = json.loads(Path(args.rubric).read_text(encoding="utf-8"))
    present = {m.group(1).strip() for m in re.finditer(r"^##\s+(.+)$", text, re.MULTILINE)}
    missing = [name for name in rubric["required_sections"] if name not in present]
    if not missing:
        print("every required section is there; nothing to add", file=sys.stderr)
        return 0
    section = missing[0]
    body = text if text.endswith("\n") or not text else text + "\n"
    path.write_text(f"{body}\n## {section}\n\nTODO: write the {section.lower()} "
                    "section.\n", encoding="utf-8")
    print(f"added the section {section!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
