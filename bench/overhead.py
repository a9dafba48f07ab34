"""The engine's own cost per iteration, against git's floor and the seed's full copy.

    uv run python bench/overhead.py                        # the full run (2-4 min on 2 CPUs)
    uv run python bench/overhead.py --sizes 100 --rounds 3  # a quick look
    uv run python bench/overhead.py --json > figures.json

It generates repositories of 100, 10,000 and 100,000 files and one of 100 files plus a
200 MB binary (``bin``), each with two tasks whose steps are trivial (mutator and runner
``true``, a scorer that prints a fixed score): ``bench`` makes a fresh sandbox,
``bench-reuse`` sets ``sandbox.reuse: true``.  Each round times, interleaved in a
shuffled order, one of each:

    python         a bare interpreter (``python -c pass``)
    import_floor   ``python -c "import git, yaml, click, unidiff"`` (the seed's imports)
    validate       ``loopengine validate``
    worktree       ``git worktree add --detach`` + ``git worktree remove --force``
    copy           the seed's full copy: ``cp -r`` of the repository + ``rm -rf``
    run            ``loopengine run`` with a fresh sandbox
    run_reuse      ``loopengine run`` with ``sandbox.reuse: true``

and reports medians (wall clock, and the CPU time of the whole process tree, which is
steadier on a busy machine), the issue's target ratios, and how many git processes one
iteration starts (counted by a ``git`` shim on PATH in an extra, untimed run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
GENERATOR_VERSION = "2"
FILES_PER_DIR = 100
BINARY_BYTES = 200 << 20
ALL_SIZES = ("100", "10000", "100000", "bin")
FIXED = ("python", "import_floor", "validate")
PER_SIZE = ("worktree", "copy", "run", "run_reuse")

TASK = """\
id: {id}
description: engine overhead benchmark, trivial steps
artifacts: {{include: [notes.md]}}
mutation: {{max_changed_lines: 10, allowed_file_types: [".md"]}}
mutator: {{type: command, command: "true", cwd: tasks/bench}}
runner: {{command: "true", cwd: tasks/bench}}
scorer:
  type: command
  command: "echo '{{\\"score\\": 1}}'"
  cwd: tasks/bench
objective: {{direction: maximize}}
constraints: []
policy: {{}}
budget: {{max_seconds: 600}}
logging: {{results_path: work/results.jsonl}}
sandbox: {{reuse: {reuse}}}
"""

# Targets of issue 5, as (name, numerator, denominator, bound).
TARGETS = (
    ("small run / import floor", ("100", "run"), ("", "import_floor"), 2.0),
    ("small run (reuse) / import floor", ("100", "run_reuse"), ("", "import_floor"), 2.0),
    ("reuse: 100,000 files / 100 files", ("100000", "run_reuse"), ("100", "run_reuse"), 3.0),
    ("reuse at 100,000 files / full copy", ("100000", "run_reuse"), ("100000", "copy"), 0.2),
    ("validate / import floor", ("", "validate"), ("", "import_floor"), 1.5),
)


@dataclass
class Sample:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def median(self) -> tuple[float, float]:
        return statistics.median(self.wall), statistics.median(self.cpu)


def timed(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Wall and CPU seconds (the whole process tree) of one command; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0,):
        raise SystemExit(f"bench: {' '.join(argv)} failed ({proc.returncode}):\n"
                         f"{proc.stdout.decode()[-2000:]}\n{proc.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


# ---------------------------------------------------------------------------
# The repositories


def generate(path: Path, size: str) -> Path:
    """A committed repository with ``size`` files (reused when already generated)."""
    marker = path / ".git" / "loopengine-bench"
    if marker.exists() and marker.read_text() == GENERATOR_VERSION:
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    count = 100 if size == "bin" else int(size)
    for i in range(count):
        group = i // FILES_PER_DIR
        folder = path / "src" / f"d{group // 100:03d}" / f"s{group % 100:02d}"
        if i % FILES_PER_DIR == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_text(f"file {i}\n" * 4)
    if size == "bin":
        (path / "data").mkdir()
        with open(path / "data" / "blob.bin", "wb") as fh:
            for _ in range(BINARY_BYTES >> 20):
                fh.write(os.urandom(1 << 20))
    (path / ".gitignore").write_text("/work/\n")
    (path / "tasks" / "bench").mkdir(parents=True)
    (path / "tasks" / "bench" / "notes.md").write_text("a note\n")
    for task_id, reuse in (("bench", "false"), ("bench-reuse", "true")):
        (path / "tasks" / "bench" / f"{task_id}.yaml").write_text(
            TASK.format(id=task_id, reuse=reuse))
    git(path, "add", "-A")
    git(path, "-c", "core.looseCompression=0", "-c", "user.name=bench",
        "-c", "user.email=bench@localhost", "commit", "-q", "--no-verify", "-m", "bench")
    # Packed, as a real repository mostly is (and `cp -r` copies one pack, not a file
    # per object).
    git(path, "repack", "-adq")
    git(path, "prune-packed")
    # The index was written in the same second as the files: every entry is "racily
    # clean" and each `git status` would re-hash it.  A user's index is rarely in that
    # state; refresh it once, a second later, as any git command the user runs would.
    time.sleep(1.05)
    git(path, "update-index", "-q", "--refresh")
    marker.write_text(GENERATOR_VERSION)
    return path


# ---------------------------------------------------------------------------
# The measurements


class Bench:
    def __init__(self, root: Path, sizes: Sequence[str]) -> None:
        self.root = root
        self.sizes = sizes
        self.sandboxes = root / "sandboxes"
        self.scratch = root / "scratch"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("GIT_", "LOOPENGINE_"))}
        self.env["LOOPENGINE_SANDBOX_ROOT"] = str(self.sandboxes)
        # An installed tool runs from cached bytecode.  Where PYTHONDONTWRITEBYTECODE is
        # set, every start compiles click, yaml and the rest anew (about 3x the imports);
        # keep the cache under --dir so the project tree is not touched.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        self.repos = {size: root / f"repo-{size}" for size in sizes}
        self.samples: dict[tuple[str, str], Sample] = {}

    def action(self, size: str, what: str) -> Callable[[], tuple[float, float]]:
        repo = self.repos.get(size) or next(iter(self.repos.values()))
        task = "tasks/bench/bench-reuse.yaml" if what == "run_reuse" else "tasks/bench/bench.yaml"
        if what == "python":
            return lambda: timed([PY, "-c", "pass"], cwd=repo, env=self.env)
        if what == "import_floor":
            return lambda: timed([PY, "-c", "import git, yaml, click, unidiff"], cwd=repo,
                                 env=self.env)
        if what == "validate":
            return lambda: timed([PY, "-m", "loopengine", "validate", "--task", task], cwd=repo,
                                 env=self.env)
        if what in ("run", "run_reuse"):
            return lambda: timed([PY, "-m", "loopengine", "run", "--task", task], cwd=repo,
                                 env=self.env)
        if what == "worktree":
            return lambda: self.worktree(repo)
        if what == "copy":
            return lambda: self.copy(repo)
        raise ValueError(what)

    def worktree(self, repo: Path) -> tuple[float, float]:
        dest = self.scratch / "wt"
        add = timed(["git", "worktree", "add", "-q", "--detach", str(dest), "HEAD"], cwd=repo)
        rm = timed(["git", "worktree", "remove", "--force", str(dest)], cwd=repo)
        return add[0] + rm[0], add[1] + rm[1]

    def copy(self, repo: Path) -> tuple[float, float]:
        dest = self.scratch / "copy"
        cp = timed(["cp", "-r", str(repo), str(dest)], cwd=self.root)
        rm = timed(["rm", "-rf", str(dest)], cwd=self.root)
        return cp[0] + rm[0], cp[1] + rm[1]

    def plan(self) -> list[tuple[str, str]]:
        return [("", w) for w in FIXED] + [(s, w) for s in self.sizes for w in PER_SIZE]

    def warm_up(self) -> None:
        """One untimed run of each: the baseline score gets stored, the pool filled."""
        for size in self.sizes:
            for what in ("run", "run_reuse"):
                self.action(size, what)()

    def measure(self, rounds: int, progress: Callable[[str], None]) -> None:
        rng = random.Random(5)
        for r in range(rounds):
            plan = self.plan()
            rng.shuffle(plan)
            for size, what in plan:
                wall, cpu = self.action(size, what)()
                sample = self.samples.setdefault((size, what), Sample())
                sample.wall.append(wall)
                sample.cpu.append(cpu)
            progress(f"round {r + 1}/{rounds} done")

    def count_git(self, size: str, what: str) -> dict[str, Any]:
        """The git processes one run starts, with the time each kind took; whether
        GitPython was imported; git processes still alive afterwards."""
        shim = self.root / "shim"
        shim.mkdir(exist_ok=True)
        real = shutil.which("git", path=self.env.get("PATH"))
        log = self.root / "git-calls.log"
        # Not exec: the shim waits to note how long git took (the run is not timed).
        (shim / "git").write_text(
            f'#!/bin/sh\ns=$(date +%s%N)\n"{real}" "$@"\nrc=$?\n'
            f'printf "%s %s\\n" "$(( $(date +%s%N) - s ))" "$*" >> "{log}"\nexit $rc\n')
        (shim / "git").chmod(0o755)
        log.write_text("")
        env = dict(self.env, PATH=f"{shim}{os.pathsep}{self.env.get('PATH', '')}")
        task = "tasks/bench/bench-reuse.yaml" if what == "run_reuse" else "tasks/bench/bench.yaml"
        proc = subprocess.run([PY, "-X", "importtime", "-m", "loopengine", "run", "--task", task],
                              cwd=self.repos[size], env=env, capture_output=True, text=True,
                              check=False)
        modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                   if line.startswith("import time:")}
        calls: dict[str, list[float]] = {}
        for line in log.read_text().splitlines():
            ns, _, args = line.partition(" ")
            entry = calls.setdefault(subcommand(args.split()), [0, 0.0])
            entry[0] += 1
            entry[1] += int(ns) / 1e6
        return {"total": sum(int(c[0]) for c in calls.values()),
                "calls": {k: {"count": int(c[0]), "ms": round(c[1], 1)} for k, c in calls.items()},
                "gitpython": "git" in modules, "git_left_running": _git_processes()}


def _git_processes() -> int:
    """git processes still running (GitPython's `cat-file --batch` would be one)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv and os.path.basename(argv[0]) == b"git" and b"cat-file" in argv:
                count += 1
    return count


def subcommand(args: list[str]) -> str:
    """The git subcommand of an argument list (global options skipped)."""
    i = 0
    while i < len(args):
        if args[i] in ("-c", "-C"):
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return "?"


# ---------------------------------------------------------------------------
# The report


def report(bench: Bench, counts: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    medians = {f"{size}:{what}" if size else what: dict(zip(("wall", "cpu"), s.median(),
                                                            strict=True))
               for (size, what), s in bench.samples.items()}
    ratios = []
    for name, num, den, bound in TARGETS:
        a, b = bench.samples.get(num), bench.samples.get(den)
        if a is None or b is None:
            continue
        (aw, ac), (bw, bc) = a.median(), b.median()
        ratios.append({"target": name, "bound": bound, "wall": aw / bw, "cpu": ac / bc,
                       "met": aw / bw <= bound})
    return {"meta": meta, "medians": medians, "targets": ratios, "git_processes": counts}


def print_text(data: dict[str, Any], sizes: Sequence[str]) -> None:
    med = data["medians"]
    meta = data["meta"]
    print(f"# {meta['rounds']} rounds, medians; wall (CPU of the process tree), ms;"
          f" repositories and sandboxes under {meta['dir']}; {meta['cpus']} CPUs, load "
          f"{meta['load_before'][0]} -> {meta['load_after'][0]}; {meta['git']}")
    for what in FIXED:
        m = med[what]
        print(f"{what:<14}{m['wall'] * 1000:9.0f} ({m['cpu'] * 1000:.0f})")
    print()
    print(f"{'':<14}" + "".join(f"{s + ' files' if s != 'bin' else '100 + 200 MB':>22}"
                                for s in sizes))
    for what in PER_SIZE:
        cells = []
        for s in sizes:
            m = med.get(f"{s}:{what}")
            cells.append(f"{m['wall'] * 1000:10.0f} ({m['cpu'] * 1000:6.0f})" if m else "")
        print(f"{what:<14}" + "".join(f"{c:>22}" for c in cells))
    for what in ("run", "run_reuse"):
        cells = []
        for s in sizes:
            run, copy = med.get(f"{s}:{what}"), med.get(f"{s}:copy")
            wt = med.get(f"{s}:worktree")
            if run and copy and wt:
                cells.append(f"{run['wall'] / wt['wall']:.2f}x wt "
                             f"{run['wall'] / copy['wall']:.2f}x cp")
        print(f"{what + ' ratio':<14}" + "".join(f"{c:>22}" for c in cells))
    print()
    for t in data["targets"]:
        verdict = "met" if t["met"] else "NOT met"
        print(f"{t['target']:<38} {t['wall']:6.2f}x  (CPU {t['cpu']:5.2f}x)  "
              f"target <= {t['bound']}x: {verdict}")
    print()
    for key, c in data["git_processes"].items():
        ranked = sorted(c["calls"].items(), key=lambda kv: -kv[1]["ms"])
        calls = ", ".join(f"{k} {v['count']}x {v['ms']:.0f} ms" for k, v in ranked)
        print(f"git processes, {key}: {c['total']} ({calls}); cat-file left running: "
              f"{c['git_left_running']}; GitPython imported: "
              f"{'yes' if c['gitpython'] else 'no'}")


def main(argv: Sequence[str] | None = None) -> int:
    default_dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(ALL_SIZES),
                        help="comma-separated: file counts and/or 'bin' (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--dir", type=Path, default=default_dir / "loopengine-bench",
                        help="where repositories and sandboxes go (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated repositories for the next run")
    parser.add_argument("--show", type=Path, metavar="FILE",
                        help="print the figures saved by an earlier --json run; run nothing")
    args = parser.parse_args(argv)
    if args.show:
        saved = json.loads(args.show.read_text())
        print_text(saved, saved["meta"]["sizes"])
        return 0
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s != "bin" and not s.isdigit():
            parser.error(f"--sizes: {s!r} is neither a file count nor 'bin'")

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    bench = Bench(root, sizes)
    try:
        for size in sizes:
            progress(f"generating {size} ...")
            generate(bench.repos[size], size)
        bench.sandboxes.mkdir(exist_ok=True)
        bench.scratch.mkdir(exist_ok=True)
        bench.warm_up()
        bench.measure(args.rounds, progress)
        counts = {}
        for size in sizes:
            for what in ("run", "run_reuse"):
                counts[f"{size}:{what}"] = bench.count_git(size, what)
        # The reuse pools stay (that is their point); nothing else may.
        leftovers = sorted(p.name for p in bench.sandboxes.iterdir()
                           if not p.name.startswith("loopengine-pool-"))
        meta = {"rounds": args.rounds, "sizes": sizes, "dir": str(root),
                "cpus": os.cpu_count(), "git": git(root, "--version").strip(),
                "python": sys.version.split()[0], "seconds": round(time.monotonic() - t0, 1),
                "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
                "sandbox_root_after": leftovers}
        data = report(bench, counts, meta)
    finally:
        if not args.keep:
            # The pools' worktrees are registered in the repositories, which go too.
            for size in sizes:
                shutil.rmtree(bench.repos[size], ignore_errors=True)
            shutil.rmtree(bench.sandboxes, ignore_errors=True)
        shutil.rmtree(bench.scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_text(data, sizes)
        print(f"\nsandbox root after the runs: {leftovers or 'empty'}; "
              f"took {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
