"""Peak memory of one run whose mutator writes a large binary file (issue 9, point 12).

    uv run python bench/memory.py [--mb 300] [--artifact]

Prints the engine's own peak RSS and the largest child's (git, the steps), in MB.  The
file is random bytes (incompressible), written next to the artifact (a discard: not an
artifact) or, with --artifact, as the artifact itself (a discard: a binary change).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

WRAPPER = """
import atexit, resource, runpy, sys
def report():
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"MEMORY {me} {kids}", file=sys.stderr)
atexit.register(report)
sys.argv = ["loopengine", "run", "--task", "tasks/demo/task.yaml"]
runpy.run_module("loopengine", run_name="__main__")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--artifact", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        (root / "tasks" / "demo").mkdir(parents=True)
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
        subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
        (root / ".gitignore").write_text("/work/\n")
        (root / "tasks/demo/notes.md").write_text("first\n")
        big = Path(tmp) / "big.bin"
        with open(big, "wb") as fh:
            for _ in range(args.mb):
                fh.write(os.urandom(1 << 20))
        target = "notes.md" if args.artifact else "dump.bin"
        task = {
            "id": "demo", "description": "memory",
            "artifacts": {"include": ["notes.md"], "max_files_per_iteration": 1},
            "mutation": {"max_changed_lines": 10, "allowed_file_types": [".md"]},
            "mutator": {"type": "command", "command": f"cp {big} {target}",
                        "cwd": "tasks/demo", "timeout_seconds": 600},
            "runner": {"command": "true", "cwd": "tasks/demo", "timeout_seconds": 60},
            "scorer": {"type": "command", "command": "echo '{\"score\": 1}'",
                       "cwd": "tasks/demo", "timeout_seconds": 60,
                       "parse": {"format": "json", "score_field": "score"}},
            "objective": {"direction": "maximize"}, "constraints": [],
            "policy": {"min_improvement": 0.0, "keep_when_no_baseline": True,
                       "commit_on_keep": True},
            "budget": {"max_seconds": 900},
            "logging": {"results_path": "work/results.jsonl"},
        }
        (root / "tasks/demo/task.yaml").write_text(yaml.safe_dump(task))
        subprocess.run([*git, "add", "-A"], cwd=root, check=True)
        subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
        proc = subprocess.run([sys.executable, "-c", WRAPPER], cwd=root, capture_output=True,
                              text=True, check=False)
        rec = json.loads(proc.stdout.splitlines()[0])
        line = [x for x in proc.stderr.splitlines() if x.startswith("MEMORY ")][-1]
        me, kids = (int(v) // 1024 for v in line.split()[1:])
        print(f"{args.mb} MB {'artifact' if args.artifact else 'non-artifact'} file: "
              f"status {rec['status']} ({rec['reason'][:60]}); engine peak RSS {me} MB, "
              f"largest child {kids} MB")


if __name__ == "__main__":
    main()
