"""What the CLI's start-up costs, per command: import time and wall time.

    uv run python bench/startup.py [--repeats N]

Makes a throwaway repository with one task and one run, then for each command reads
``python -X importtime`` (the cumulative time of ``loopengine.cli`` and of every
top-level package imported) and the wall time of the whole process (the median of N).
Run it on a quiet machine: the figures are for comparing, not for asserting.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (
    ("--help",),
    ("validate", "--task", "tasks/demo/task.yaml"),
    ("status",),
    ("status", "--json"),
    ("results", "--json"),
    ("run", "--task", "tasks/demo/task.yaml"),
    ("report",),
)


def importtime(root: Path, args: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "loopengine", *args],
                          cwd=root, capture_output=True, text=True, check=False)
    total, tops = 0, {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (p.strip() for p in line[len("import time:"):].split("|"))
        if not cumulative.isdigit():
            continue
        if not name.startswith(" "):
            total += int(cumulative)
        top = name.strip().split(".")[0]
        tops[top] = max(tops.get(top, 0), int(cumulative))
    return total, tops


def wall(root: Path, args: tuple[str, ...], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "loopengine", *args], cwd=root,
                       capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def setup(root: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "loopengine", "init", "demo"], cwd=root,
                   check=True, capture_output=True)
    (root / ".gitignore").write_text("/work/\n")
    git("add", "-A")
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "init")
    subprocess.run([sys.executable, "-m", "loopengine", "run", "--task",
                    "tasks/demo/task.yaml"], cwd=root, check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup(root)
        heavy = ("matplotlib", "mcp", "rich", "ray", "numpy", "pydantic", "yaml", "click")
        print(f"{'command':<28} {'importtime':>10} {'wall ms':>8}  heavy packages (ms)")
        for args in COMMANDS:
            total, tops = importtime(root, args)
            seconds = wall(root, args, options.repeats if args[0] != "run" else 1)
            shown = ", ".join(f"{n} {tops[n] / 1000:.0f}" for n in heavy if n in tops)
            print(f"{' '.join(args)[:28]:<28} {total / 1000:>10.0f} {seconds * 1000:>8.0f}  "
                  f"{shown}")


if __name__ == "__main__":
    main()
