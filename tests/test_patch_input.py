"""``--patch`` from standard input, a pipe or ``/dev/stdin``; empty patches; patches made
against an older baseline (a three-way merge); no git hints in reasons."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import Repo, Result, default_task

NOTES = "tasks/demo/notes.md"
ORIGINAL = "".join(f"line {n}\n" for n in range(1, 9))


def run_piped(repo: Repo, patch_arg: str, data: bytes | None, *, shell: str | None = None,
              timeout: float = 120) -> Result:
    """``loopengine run --patch ARG`` with ``data`` on its standard input (a pipe)."""
    argv = [sys.executable, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml",
            "--patch", patch_arg]
    proc = subprocess.run(shell if shell else argv, shell=shell is not None,
                          executable="/bin/bash" if shell else None, cwd=repo.path,
                          input=data, capture_output=True, timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def made_by_git(repo: Repo, text: str, name: str) -> bytes:
    """A patch as an agent makes one: edit the artifact, `git diff`, put it back."""
    before = repo.read(NOTES)
    repo.write(NOTES, text)
    patch = repo.git("diff", "--", NOTES).encode()
    repo.write(NOTES, before)
    (repo.path.parent / name).write_bytes(patch)
    return patch


def test_a_patch_on_standard_input_is_read_once_and_kept(repo: Repo) -> None:
    patch = made_by_git(repo, "first\nsecond\n", "a.diff")
    result = run_piped(repo, "-", patch)
    rec = result.record
    assert (result.code, rec["status"]) == (0, "keep"), result.stderr
    assert repo.read(NOTES) == "first\nsecond\n"
    saved = repo.path / "work/runs" / rec["run_id"] / "input.patch"
    assert saved.read_bytes() == patch


def test_dev_stdin_a_shell_pipe_and_process_substitution_work(repo: Repo) -> None:
    made_by_git(repo, "first\nsecond\n", "a.diff")
    rec = run_piped(repo, "/dev/stdin", (repo.path.parent / "a.diff").read_bytes()).record
    assert rec["status"] == "keep"
    made_by_git(repo, "first\nsecond\nthird\n", "b.diff")
    cmd = (f"cat ../b.diff | {sys.executable} -m loopengine run --task tasks/demo/task.yaml "
           "--patch /dev/stdin")
    rec = run_piped(repo, "", None, shell=cmd).record
    assert rec["status"] == "keep"
    made_by_git(repo, "first\nsecond\nthird\nfourth\n", "c.diff")
    cmd = (f"{sys.executable} -m loopengine run --task tasks/demo/task.yaml "
           "--patch <(cat ../c.diff)")
    rec = run_piped(repo, "", None, shell=cmd).record
    assert rec["status"] == "keep", rec["reason"]
    assert repo.read(NOTES) == "first\nsecond\nthird\nfourth\n"
    assert repo.git("status", "--porcelain") == ""


def test_an_empty_patch_is_a_candidate_with_no_change(repo: Repo) -> None:
    first = run_piped(repo, "-", b"")  # the first run: the baseline is measured
    assert (first.code, first.record["status"]) == (0, "discard"), first.stderr
    assert first.record["reason"] == "candidate has no change"
    assert repo.run().record["status"] == "keep"
    head = repo.git("rev-parse", "HEAD")
    for data in (b"", b"\n\n"):
        result = run_piped(repo, "-", data)
        rec = result.record
        assert (result.code, rec["status"]) == (0, "discard"), result.stderr
        assert rec["reason"] == "candidate has no change"
        assert rec["crash_kind"] is None and rec["changed_files"] == []
        assert "--allow-empty" not in result.stdout + result.stderr
    empty = repo.path.parent / "empty.diff"
    empty.write_bytes(b"")
    rec = repo.run("--patch", str(empty)).record
    assert (rec["status"], rec["reason"]) == ("discard", "candidate has no change")
    rec = run_piped(repo, "-", None).record  # stdin at its end at once
    assert rec["status"] == "discard"
    assert repo.git("rev-parse", "HEAD") == head


def test_no_reason_carries_gits_hints_for_its_own_options(repo: Repo) -> None:
    result = run_piped(repo, "-", b"this is not a diff\n")
    rec = result.record
    assert (rec["status"], rec["crash_kind"]) == ("crash", "mutator")
    assert rec["reason"] == ("the patch from standard input does not apply: "
                             "No valid patches in input")
    assert "--" not in rec["reason"] and "allow with" not in result.stderr


def test_a_patch_that_never_arrives_does_not_hang_nor_blame_its_paths(repo: Repo) -> None:
    repo.write_task(default_task(budget__max_seconds=3))
    repo.commit("a short budget")
    fifo = repo.path.parent / "never.fifo"
    os.mkfifo(fifo)
    result = repo.run("--patch", str(fifo), timeout=60)
    rec = result.record
    assert (rec["status"], rec["crash_kind"]) == ("crash", "mutator")
    assert rec["reason"].startswith(f"the patch {fifo} was still not complete after")
    assert "paths are relative" not in rec["reason"]
    # A writer that keeps the pipe open without writing: the same, within the budget.
    sleeper = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE)
    try:
        argv = [sys.executable, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml",
                "--patch", "-"]
        proc = subprocess.run(argv, cwd=repo.path, stdin=sleeper.stdout, capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert '"crash_kind":"mutator"' in proc.stdout
    assert "was still not complete" in proc.stdout
    assert repo.read(NOTES) == "first\n"


# ---------------------------------------------------------------------------
# A patch made against an older baseline


def two_candidates(repo: Repo) -> tuple[bytes, bytes]:
    repo.write(NOTES, ORIGINAL)
    repo.commit("eight lines")
    first = made_by_git(repo, ORIGINAL.replace("line 5\n", "line 5!\nline 5b\n"),
                        "first.diff")
    second = made_by_git(repo, ORIGINAL.replace("line 2\n", "line 2\nline 2b\n"),
                         "second.diff")
    return first, second


def test_a_patch_made_before_another_keep_is_merged_three_way(repo: Repo, guarded) -> None:
    two_candidates(repo)
    assert guarded("--patch", str(repo.path.parent / "first.diff")).record["status"] == "keep"
    # The second was made against the old baseline: its context (line 5) moved on.
    plain = subprocess.run(["git", "apply", "--check", str(repo.path.parent / "second.diff")],
                           cwd=repo.path, capture_output=True, check=False)
    assert plain.returncode != 0
    result = guarded("--patch", str(repo.path.parent / "second.diff"))
    rec = result.record
    assert (result.code, rec["status"]) == (0, "keep"), rec["reason"]
    assert repo.read(NOTES) == ORIGINAL.replace("line 2\n", "line 2\nline 2b\n").replace(
        "line 5\n", "line 5!\nline 5b\n")
    assert rec["changed_lines"] == 1 and rec["diff_summary"].startswith("1 file changed, 1 ")
    log = (repo.path / "work/runs" / rec["run_id"] / "mutator.log").read_text()
    assert "--3way" in log


def test_a_real_conflict_is_a_discard_naming_the_file(repo: Repo, guarded) -> None:
    two_candidates(repo)
    rival = made_by_git(repo, ORIGINAL.replace("line 5\n", "line five\nline 5c\n"),
                        "rival.diff")
    assert rival
    assert guarded("--patch", str(repo.path.parent / "first.diff")).record["status"] == "keep"
    kept = repo.read(NOTES)
    result = guarded("--patch", str(repo.path.parent / "rival.diff"))
    rec = result.record
    assert (result.code, rec["status"], rec["crash_kind"]) == (0, "discard", None)
    assert NOTES in rec["reason"] and "conflict" in rec["reason"]
    assert rec["violations"] == [{"rule": "patch_conflict", "path": NOTES,
                                  "limit": "applies to the current baseline",
                                  "actual": "conflict"}]
    assert repo.read(NOTES) == kept
    assert rec["candidate_score"] is None


def test_a_patch_without_index_lines_that_does_not_apply_is_still_a_crash(repo: Repo) -> None:
    two_candidates(repo)
    text = (f"--- a/{NOTES}\n+++ b/{NOTES}\n@@ -1,2 +1,2 @@\n line 1\n-line two\n"
            "+line 2!\n")
    rec = run_piped(repo, "-", text.encode()).record
    assert (rec["status"], rec["crash_kind"]) == ("crash", "mutator")
    assert rec["reason"] == f"the patch from standard input does not apply: patch failed: {NOTES}:1"


def test_a_terminal_on_standard_input_is_refused_not_waited_for(repo: Repo) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "loopengine", "run", "--task",
                               "tasks/demo/task.yaml", "--patch", "-"], cwd=repo.path,
                              stdin=slave, capture_output=True, text=True, timeout=60,
                              check=False)
    finally:
        os.close(slave)
        os.close(master)
    rec = Result(proc.returncode, proc.stdout, proc.stderr).record
    assert (rec["status"], rec["crash_kind"]) == ("crash", "mutator")
    assert rec["reason"].startswith("--patch -: standard input is a terminal")
    assert repo.read(NOTES) == "first\n"
