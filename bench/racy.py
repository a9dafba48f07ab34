"""Git's racy-clean tax on a fresh sandbox, before and after ``sandbox.settle`` (issue 15.2).

    uv run python bench/racy.py                      # 10,000 files, 5 rounds
    uv run python bench/racy.py --files 38000 --rounds 3

A fresh sandbox writes its files and its start index in the same second, so git cannot
trust the stat data of those files: every ``diff-files`` (the integrity check after each
runner and scorer run) and every ``add -A`` (the candidate's snapshot) against a copy of
the start index re-reads and re-hashes them.  Each round makes a real sandbox with the
engine's own ``sandbox.create`` on a generated repository (tmpfs when available), then
times, in the same sandbox:

    before   ``diff-files`` against a copy of the start index as the checkout left it
    settle   ``sandbox.settle`` once the clock has left the checkout's second (one refresh)
    after    ``diff-files`` against a copy of the settled start index

and prints the medians and the ratio before / after.  ``--strace`` also counts the
``read`` calls of one ``diff-files`` each way (when strace is installed).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loopengine import git, sandbox

FILES_PER_DIR = 100


def make_repo(root: Path, files: int) -> Path:
    repo = root / f"repo-{files}"
    if (repo / ".git" / "bench-done").is_file():
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for i in range(files):
        d = repo / "src" / f"d{i // FILES_PER_DIR:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.txt").write_text(f"file {i}\n" + "x" * 200 + "\n")
    env = ["-c", "user.name=bench", "-c", "user.email=bench@example.com", "-c", "gc.auto=0"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "commit", "-q", "-m", "bench"], check=True)
    subprocess.run(["git", "-C", str(repo), "gc", "-q"], check=True)
    (repo / ".git" / "bench-done").write_text("")
    return repo


def timed_diff_files(sb: sandbox.Sandbox, name: str) -> float:
    index = sb.index(name)
    shutil.copy2(sb.start_index, index)  # what Integrity does: the mtime is kept
    started = time.perf_counter()
    git.run(sb.ctx.with_index(index), "diff-files", "--name-only", "-z")
    return time.perf_counter() - started


def reads(sb: sandbox.Sandbox, name: str) -> int | None:
    if shutil.which("strace") is None:
        return None
    index = sb.index(name)
    shutil.copy2(sb.start_index, index)
    env = sb.ctx.with_index(index)
    proc = subprocess.run(["strace", "-f", "-c", "-e", "trace=openat", "git",
                           f"--git-dir={env.git_dir}", f"--work-tree={env.work_tree}",
                           "diff-files", "--name-only"],
                          env={"GIT_INDEX_FILE": str(index), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=False)
    for line in proc.stderr.splitlines():
        if line.rstrip().endswith("openat"):
            return int(line.split()[3])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm/loopengine-bench-racy")
                        if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir()) /
                        "loopengine-bench-racy")
    parser.add_argument("--strace", action="store_true")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    repo_root = make_repo(args.dir, args.files)
    info = git.repo_info(repo_root)
    before: list[float] = []
    after: list[float] = []
    settling: list[float] = []
    racy_rounds = 0
    counts: tuple[int | None, int | None] = (None, None)
    for n in range(args.rounds):
        sb = sandbox.create(info, f"bench-racy-{n}", [])
        try:
            written = sb.start_index.stat().st_mtime
            newest = max(p.stat().st_mtime for p in (sb.tree / "src").glob("d*/f*.txt"))
            racy_rounds += math.floor(newest) >= math.floor(written)
            before.append(timed_diff_files(sb, "before"))
            first_reads = reads(sb, "before") if args.strace and n == 0 else None
            # Wait for the next second, as a mutator longer than a second would.
            time.sleep(max(0.0, math.floor(written) + 1.1 - time.time()))
            started = time.perf_counter()
            assert sandbox.settle(sb)
            settling.append(time.perf_counter() - started)
            after.append(timed_diff_files(sb, "after"))
            if args.strace and n == 0:
                counts = (first_reads, reads(sb, "after"))
        finally:
            sandbox.remove(sb, info)
    b, a, s = (statistics.median(x) * 1000 for x in (before, after, settling))
    print(f"{args.files} files, {args.rounds} rounds, git {git_version()}, "
          f"checkout and index in the same second in {racy_rounds}/{args.rounds} rounds")
    print(f"  diff-files, start index as checked out : {b:8.1f} ms (median)")
    print(f"  settle (one update-index --refresh)     : {s:8.1f} ms (once per sandbox)")
    print(f"  diff-files, settled start index        : {a:8.1f} ms (median)")
    print(f"  ratio before / after                   : {b / a:8.1f}x")
    if counts != (None, None):
        print(f"  files opened by one diff-files         : {counts[0]} -> {counts[1]}")
    return 0


def git_version() -> str:
    return subprocess.run(["git", "version"], capture_output=True, text=True,
                          check=False).stdout.split()[-1]


if __name__ == "__main__":
    sys.exit(main())
