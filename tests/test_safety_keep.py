"""Issue 9, points 1, 4, 9 and 11: the keep is a transaction, and keeps the scored bytes.

Record, baseline, branch, index and file always agree: a keep while the user's index is
locked waits for the lock (or is a crash that changed nothing), a target that cannot be
written is a crash before anything moved, a recovery killed half-way is finished by the
run after it, the kept file keeps its permission bits, and a filter or an attribute never
puts other bytes in the user's file than the ones that were scored.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Repo, assert_guarantees, snapshot
from conftest import default_task as conftest_task
from hardening_checks import checked

from loopengine import faults

NOTES = "tasks/demo/notes.md"


def default_task(**overrides: Any) -> dict[str, Any]:
    """The demo task with isolation off: these steps reach the main repository and the
    test's folders on purpose (the scenarios of an unisolated run)."""
    overrides.setdefault("isolation", {"mode": "none"})
    return conftest_task(**overrides)


def baseline(repo: Repo) -> dict[str, Any] | None:
    path = repo.path / "work" / "baselines" / "demo.json"
    return json.loads(path.read_text()) if path.exists() else None


def agree(repo: Repo, rec: dict[str, Any]) -> None:
    """Record, baseline, branch, index and file tell one story."""
    status = repo.git("status", "--porcelain", "--untracked-files=no")
    assert status == "", status
    if rec["status"] == "keep":
        assert repo.git("rev-parse", "HEAD").strip() == rec["commit"]
        assert repo.git("cat-file", "--filters", f"HEAD:{NOTES}") == repo.read(NOTES)
        stored = baseline(repo)
        assert stored is not None and stored["run_id"] == rec["run_id"]
    git_dir = repo.path / ".git"
    assert not (git_dir / "index.lock").exists()
    assert [p.name for p in git_dir.iterdir() if p.name.startswith("loopengine-")] == []
    folder = (repo.path / NOTES).parent
    assert [p.name for p in folder.iterdir() if ".loopengine-" in p.name] == []


# -- point 1: the user's index is locked -------------------------------------------------


def hold_index_lock(repo: Repo, seconds: float) -> subprocess.Popen[bytes]:
    """A process that holds .git/index.lock the way git does, then lets it go."""
    lock = repo.path / ".git" / "index.lock"
    code = (f"import os, time\nfd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)"
            f"\nprint('held', flush=True)\ntime.sleep({seconds})\nos.unlink({str(lock)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


def test_a_keep_waits_for_a_git_that_holds_the_index_lock(repo: Repo, isolated_env: Path,
                                                          tmp_path: Path) -> None:
    # As soon as the runner runs, another git takes the index lock and holds it for 2 s,
    # like an IDE's `git status`; the keep comes while it is held.
    lock = repo.path / ".git" / "index.lock"
    started = tmp_path / "started"
    # The runner watches the main repository's lock: unisolated.
    repo.write_task(default_task(
        isolation={"mode": "none"},
        runner__command=f"touch {started}; while [ ! -e {lock} ]; do sleep 0.02; done"))
    repo.commit("a runner that waits for the lock")
    code = (f"import os, time\nwhile not os.path.exists({str(started)!r}): time.sleep(0.01)\n"
            f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
            f"time.sleep(2)\nos.unlink({str(lock)!r})\n")
    holder = subprocess.Popen([sys.executable, "-c", code])
    before = snapshot(repo, isolated_env)
    try:
        rec = checked(repo, repo.run())
    finally:
        holder.wait(timeout=60)
    assert rec["status"] == "keep", rec
    assert_guarantees(repo, before, isolated_env, rec)
    agree(repo, rec)


def test_an_index_locked_for_too_long_is_a_crash_that_changed_nothing(
        repo: Repo, isolated_env: Path) -> None:
    before = snapshot(repo, isolated_env)
    holder = hold_index_lock(repo, 60)
    try:
        result = repo.run(env={"LOOPENGINE_INDEX_LOCK_WAIT": "1"})
    finally:
        holder.kill()
        holder.wait()
    rec = checked(repo, result)
    assert rec["status"] == "crash" and rec["commit"] is None, rec
    assert "index.lock" in rec["reason"] and "nothing was changed" in rec["reason"]
    (repo.path / ".git" / "index.lock").unlink()
    assert_guarantees(repo, before, isolated_env, rec)
    assert repo.read(NOTES) == "first\n"
    assert baseline(repo) is None
    # The lock is gone: the next run keeps, and everything agrees.
    again = checked(repo, repo.run())
    assert again["status"] == "keep"
    agree(repo, again)
    again = checked(repo, repo.run())
    assert again["status"] == "keep" and again["baseline_score"] == 2.0


@pytest.mark.parametrize("why", ["read-only", "disk full"])
def test_a_kept_file_that_cannot_be_written_is_a_crash_before_the_branch_moves(
        repo: Repo, isolated_env: Path, why: str) -> None:
    folder = (repo.path / NOTES).parent
    before = snapshot(repo, isolated_env)
    env = {}
    if why == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder.chmod(0o555)
    else:
        env = {faults.ERROR_VAR: "keep_write"}  # ENOSPC while the kept file is written
    try:
        rec = checked(repo, repo.run(env=env))
    finally:
        folder.chmod(0o755)
    assert rec["status"] == "crash" and rec["commit"] is None
    assert NOTES in rec["reason"] and "nothing was changed" in rec["reason"]
    assert_guarantees(repo, before, isolated_env, rec)
    assert baseline(repo) is None
    agree(repo, rec)
    again = checked(repo, repo.run())
    assert again["status"] == "keep"
    agree(repo, again)


# -- point 1: a recovery that is itself killed ---------------------------------------------


@pytest.mark.parametrize("second", ["recovery_after_files", "recovery_before_record"])
def test_a_recovery_killed_half_way_is_finished_by_the_next_run(
        repo: Repo, isolated_env: Path, second: str) -> None:
    before = snapshot(repo, isolated_env)
    first = repo.run(env={faults.FAULT_VAR: "after_ref_update"})
    assert first.code == -signal.SIGKILL
    killed = repo.run(task="tasks/missing.yaml", env={faults.FAULT_VAR: second})
    assert killed.code == -signal.SIGKILL
    nxt = repo.run(task="tasks/missing.yaml").record
    records = repo.results()
    keeps = [r for r in records if r["status"] == "keep"]
    assert len(keeps) == 1, records
    rec = keeps[0]
    # One record for each of the three runs: the keep, the killed recovery, the last.
    assert len({r["run_id"] for r in records}) == len(records) == 3
    assert nxt["run_id"] in {r["run_id"] for r in records}
    assert_guarantees(repo, before, isolated_env, rec)
    agree(repo, rec)
    assert repo.read(NOTES) == "first\nmore\n"
    assert os.listdir(repo.path / "work" / "runs" / ".active") == []


# -- point 9: permissions ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755])
def test_a_kept_artifact_keeps_its_permission_bits(repo: Repo, isolated_env: Path,
                                                   mode: int) -> None:
    (repo.path / NOTES).chmod(mode)
    if mode & 0o100:
        repo.commit("executable")
    rec = checked(repo, repo.run())
    assert rec["status"] == "keep"
    assert stat.S_IMODE((repo.path / NOTES).stat().st_mode) == mode
    agree(repo, rec)


# -- point 4: filters and attributes -------------------------------------------------------


ROT13 = "tr 'A-Za-z' 'N-ZA-Mn-za-m'"


def rot13_repo(repo: Repo) -> None:
    repo.git("config", "filter.rot.clean", ROT13)
    repo.git("config", "filter.rot.smudge", ROT13)
    repo.write(".gitattributes", "*.md filter=rot\n")
    repo.write(NOTES, "first\n")
    repo.git("add", "-A")
    repo.commit("a rot13 filter on the artifact")
    assert repo.git("cat-file", "-p", f"HEAD:{NOTES}") == "svefg\n"


def test_a_clean_smudge_filter_keeps_the_bytes_that_were_scored(
        repo: Repo, isolated_env: Path, tmp_path: Path) -> None:
    rot13_repo(repo)
    seen = tmp_path / "seen.txt"
    repo.write_task(default_task(isolation={"write": [str(tmp_path)]},
                                 runner__command=f"cat notes.md >> {seen}"))
    repo.commit("runner shows what it saw")
    rec = checked(repo, repo.run())
    assert rec["status"] == "keep", rec
    # The runner saw the smudged text: the baseline's (measured first), then the candidate's.
    assert seen.read_text() == "first\n" + "first\nmore\n"
    assert repo.read(NOTES) == "first\nmore\n"  # and that is what the user has
    assert repo.git("cat-file", "-p", f"HEAD:{NOTES}") == "svefg\nzber\n"  # git has it clean
    agree(repo, rec)
    again = checked(repo, repo.run())
    assert again["status"] == "keep" and again["baseline_score"] == 2.0
    assert repo.read(NOTES) == "first\nmore\nmore\n"


def test_an_ident_attribute_keeps_the_scored_bytes(repo: Repo, isolated_env: Path) -> None:
    repo.write(".gitattributes", "*.md ident\n")
    repo.write(NOTES, "$Id$\n")
    repo.git("add", "-A")
    repo.commit("ident")
    repo.git("rm", "-q", "--cached", NOTES)
    (repo.path / NOTES).unlink()
    repo.git("checkout", "--", ".")
    repo.git("reset", "-q")
    repo.git("checkout", "-q", "HEAD", "--", NOTES)
    scored = repo.read(NOTES)
    assert scored.startswith("$Id: ")
    rec = checked(repo, repo.run())
    assert rec["status"] == "keep", rec
    # The candidate is scored as the user's checkout shows it ($Id$ of its own blob), and
    # that is what the keep writes.
    kept = repo.read(NOTES)
    assert kept.endswith("\nmore\n") and kept != scored + "more\n"
    assert kept == repo.git("cat-file", "--filters", f"HEAD:{NOTES}")
    assert repo.git("status", "--porcelain", "--untracked-files=no") == ""


def test_a_gitattributes_in_the_candidate_that_changes_the_blob_is_a_crash_naming_it(
        repo: Repo, isolated_env: Path, tmp_path: Path) -> None:
    # The candidate adds a .gitattributes that puts a filter on the artifact: the blob it
    # was validated as is not what the user's repository makes of the scored bytes.
    repo.git("config", "filter.rot.clean", ROT13)
    repo.git("config", "filter.rot.smudge", ROT13)
    mutate = tmp_path / "mutate.sh"
    mutate.write_text("echo more >> notes.md\necho 'notes.md filter=rot' > .gitattributes\n")
    repo.write_task(default_task(
        artifacts__include=["notes.md", ".gitattributes"],
        artifacts__max_files_per_iteration=2,
        mutation__allowed_file_types=[".md", ".gitattributes"],
        mutator__command=f"sh {mutate}"))
    repo.commit("a candidate that brings its own attributes")
    before = snapshot(repo, isolated_env)
    rec = checked(repo, repo.run())
    assert rec["status"] == "crash", rec
    assert "filter=rot" in rec["reason"] and "nothing was changed" in rec["reason"], rec
    assert_guarantees(repo, before, isolated_env, rec)
    agree(repo, rec)


# -- point 11: the commit's temporary index ------------------------------------------------


def test_no_temporary_index_survives_a_kill_while_the_commit_is_built(
        repo: Repo, isolated_env: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = repo.run(env={faults.FAULT_VAR: "before_ref_update", "TMPDIR": str(tmp)})
    assert result.code == -signal.SIGKILL
    repo.run(task="tasks/missing.yaml", env={"TMPDIR": str(tmp)})
    assert os.listdir(tmp) == []
    assert os.listdir(isolated_env) == []
    assert time.time() > 0


# -- point 10: the engine's objects stay in the sandbox --------------------------------------


def has_object(repo: Repo, data: bytes) -> bool:
    sha = subprocess.run(["git", "hash-object", "--stdin"], cwd=repo.path, input=data,
                         capture_output=True, check=True).stdout.decode().strip()
    return subprocess.run(["git", "cat-file", "-e", sha], cwd=repo.path,
                          capture_output=True).returncode == 0


def test_a_discarded_candidates_files_never_reach_the_users_object_store(
        repo: Repo, isolated_env: Path, tmp_path: Path) -> None:
    junk = os.urandom(1 << 20)
    (tmp_path / "junk.bin").write_bytes(junk)
    mutate = tmp_path / "mutate.sh"
    mutate.write_text(f"cp {tmp_path / 'junk.bin'} dump.bin\necho more >> notes.md\n")
    repo.write_task(default_task(mutator__command=f"sh {mutate}"))
    repo.commit("a mutator that leaves a large file")
    repo.write("scratch.txt", "the user's own untracked notes\n")
    for _ in range(3):
        rec = checked(repo, repo.run())
        assert rec["status"] == "discard", rec
    assert not has_object(repo, junk)
    assert not has_object(repo, b"the user's own untracked notes\n")
    assert repo.git("fsck", "--no-progress", "--no-dangling") == ""
    assert os.listdir(isolated_env) == []


def test_only_the_kept_blob_reaches_the_users_object_store(repo: Repo) -> None:
    repo.write("scratch.txt", "untracked, changed on every run\n")
    rec = checked(repo, repo.run())
    assert rec["status"] == "keep"
    assert has_object(repo, b"first\nmore\n")
    assert not has_object(repo, b"untracked, changed on every run\n")
    assert repo.git("fsck", "--no-progress", "--no-dangling") == ""


# -- point 19: repositories git refuses, core.autocrlf ---------------------------------------


def test_a_repository_git_refuses_is_a_crash_saying_what_git_says_and_the_fix(
        repo: Repo, isolated_env: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the repository to another user")
    subprocess.run(["chown", "-R", "65534:65534", str(repo.path)], check=True)
    try:
        result = repo.run()
    finally:
        subprocess.run(["chown", "-R", f"{os.getuid()}:{os.getgid()}", str(repo.path)],
                       check=True)
    rec = result.record
    assert rec["status"] == "crash" and rec["crash_kind"] == "sandbox", rec
    assert "dubious ownership" in rec["reason"]
    assert f"git config --global --add safe.directory {repo.path}" in rec["reason"]
    assert "Traceback" not in result.stderr
    assert repo.read(NOTES) == "first\n"
    assert os.listdir(isolated_env) == []


def test_core_autocrlf_keeps_the_line_endings_of_the_users_checkout(
        repo: Repo, isolated_env: Path, tmp_path: Path) -> None:
    repo.git("config", "core.autocrlf", "true")
    (repo.path / NOTES).unlink()
    repo.git("checkout", "--", NOTES)
    assert (repo.path / NOTES).read_bytes() == b"first\r\n"
    seen = tmp_path / "seen"
    repo.write_task(default_task(runner__command=f"cat notes.md > {seen}"))
    repo.commit("a runner that shows what it saw")
    rec = checked(repo, repo.run())
    assert rec["status"] == "keep", rec
    # The mutator appended "more\n"; the user's checkout writes CRLF, and so does the keep,
    # and that is also what the runner saw.
    assert (repo.path / NOTES).read_bytes() == b"first\r\nmore\r\n"
    assert seen.read_bytes() == b"first\r\nmore\r\n"
    assert repo.git("cat-file", "-p", f"HEAD:{NOTES}") == "first\nmore\n"
    assert repo.git("status", "--porcelain") == ""
    assert rec["changed_lines"] == 1


def test_keeps_with_a_git_status_loop_running_all_agree(repo: Repo, isolated_env: Path,
                                                         tmp_path: Path) -> None:
    # An IDE runs `git status` in a loop: each one takes .git/index.lock to refresh it.
    stop = tmp_path / "stop"
    loop = subprocess.Popen(
        ["sh", "-c", f"while [ ! -e {stop} ]; do GIT_OPTIONAL_LOCKS=1 git status "
                     "--porcelain >/dev/null 2>&1; done"], cwd=repo.path)
    try:
        for _ in range(4):
            rec = checked(repo, repo.run())
            assert rec["status"] == "keep", rec
    finally:
        stop.touch()
        loop.wait(timeout=30)
    agree(repo, rec)
    assert repo.read(NOTES) == "first\n" + "more\n" * 4
    assert repo.git("show", "--format=", "--name-only", "HEAD").split() == [NOTES]
