"""Issue 15.2: a fresh sandbox's start index is not racy once its second has passed.

A checkout writes its files and its index in the same second; git then cannot trust those
files' stat data and re-hashes them at every ``diff-files`` / ``add -A`` against a copy of
that index.  The engine refreshes the start index once the clock has left that second
(``sandbox.settle``); a same-size edit with its mtime put back is still seen.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import time
from pathlib import Path

from conftest import BIN, PY, Repo, default_task

from loopengine import git, sandbox
from loopengine.measure import Integrity
from loopengine.task import load_task


def racy_entries(index: Path, tree: Path) -> list[str]:
    """Entries whose mtime second is not older than the index file's (git re-hashes them)."""
    written = math.floor(index.stat().st_mtime)
    out = subprocess.run(["git", "ls-files", "--debug"], cwd=tree, capture_output=True,
                         text=True, check=True,
                         env={**os.environ, "GIT_INDEX_FILE": str(index),
                              "GIT_DIR": str(tree / ".git"), "GIT_WORK_TREE": str(tree)})
    racy, name = [], ""
    for line in out.stdout.splitlines():
        if not line.startswith(" "):
            name = line
        elif line.strip().startswith("mtime:"):
            seconds = int(line.split("mtime:")[1].split(":")[0])
            if seconds >= written:
                racy.append(name)
    return racy


def test_a_run_measures_against_a_settled_start_index(repo: Repo, tmp_path: Path) -> None:
    for i in range(50):
        repo.write(f"data/f{i}.txt", f"data {i}\n")
    copy = tmp_path / "start.index"
    # The scorer (after the mutator's second has passed) keeps a copy of the start index.
    grab = f"cp -p \"$LOOPENGINE_SANDBOX/../start.index\" {shlex.quote(str(copy))}"
    repo.write_task(default_task(
        mutator__command=f"{PY} {BIN}/append_line.py notes.md more && sleep 1.2",
        scorer__command=f"{grab} && {PY} {BIN}/score_lines.py notes.md",
        isolation={"mode": "none"}))
    repo.commit("data")
    result = repo.run()
    assert result.code == 0, result.stderr
    assert result.record["status"] == "keep"
    assert copy.exists()
    sb_tree = tmp_path / "probe"
    subprocess.run(["git", "clone", "-q", str(repo.path), str(sb_tree)], check=True)
    # Before the change every file of this small checkout was racy.
    assert racy_entries(copy, sb_tree) == []


def test_settle_waits_for_the_next_second_and_keeps_edits_visible(repo: Repo) -> None:
    for i in range(20):
        repo.write(f"data/f{i}.txt", f"data {i}\n")
    repo.commit("data")
    # A user configuration that trusts stat data: the engine's own git ignores it.
    repo.git("config", "core.trustctime", "false")
    repo.git("config", "core.checkStat", "minimal")
    info = git.repo_info(repo.path)
    task = load_task(repo.path / "tasks/demo/task.yaml", repo.path)
    sb = sandbox.create(info, "racy-test", [])
    try:
        written = sb.start_index.stat().st_mtime
        if time.time() < math.floor(written) + 1:
            assert racy_entries(sb.start_index, sb.tree)  # checkout and index: one second
            assert not sandbox.settle(sb)  # too early: a refresh now would be racy again
        # An edit within the checkout's second, same size, mtime put back (before settle).
        readme = sb.tree / "README.md"
        before = readme.stat()
        readme.write_text("a PROJECT\n")
        os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))
        time.sleep(max(0.0, math.floor(written) + 1.1 - time.time()))
        assert sandbox.settle(sb) and sandbox.settle(sb)
        assert racy_entries(sb.start_index, sb.tree) == []
        integrity = Integrity(task, sb)
        assert integrity.changed() == ["README.md"]
        # After the settle: another same-size edit with its mtime put back is seen too.
        readme.write_text("a project\n")
        os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))
        data = sb.tree / "data/f3.txt"
        old = data.stat()
        data.write_text("data X\n")
        os.utime(data, ns=(old.st_atime_ns, old.st_mtime_ns))
        assert integrity.changed() == ["data/f3.txt"]
        # The start index still holds the start tree.
        assert git.out(sb.ctx.with_index(sb.start_index), "write-tree") == sb.start_tree
    finally:
        sandbox.remove(sb, info)
