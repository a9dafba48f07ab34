"""The keep (contract section 6): one commit, only the artifacts, the user's work intact.

Every run is checked against the section-3 guarantees: ``guarded`` for the standard
repository, ``checked`` for repositories a test builds itself.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PROJECT, PY, Repo, Result, assert_guarantees, default_task, snapshot

NOTES = "tasks/demo/notes.md"


@pytest.fixture
def checked(isolated_env: Path) -> Any:
    """``checked(repo, *args)`` runs loopengine in ``repo`` and asserts the guarantees."""

    def call(r: Repo, *args: str, **kwargs: Any) -> Result:
        before = snapshot(r, isolated_env)
        result = r.run(*args, **kwargs)
        assert_guarantees(r, before, isolated_env, result.record)
        return result

    return call


def commits(r: Repo) -> int:
    return int(r.git("rev-list", "--count", "HEAD"))


def trailer(r: Repo, key: str, rev: str = "-1") -> str:
    return r.git("log", rev, f"--format=%(trailers:key={key},valueonly)").strip()


def porcelain(r: Repo) -> list[str]:
    return r.git("status", "--porcelain", "--untracked-files=all").splitlines()


# ---------------------------------------------------------------------------
# The commit


def test_one_commit_per_keep_with_subject_and_trailers(repo: Repo, guarded) -> None:
    start = commits(repo)
    first = guarded().record
    assert first["status"] == "keep"
    assert commits(repo) == start + 1
    assert first["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert repo.git("show", "--format=", "--name-only", "HEAD").split() == [NOTES]
    assert repo.log()[0] == "loopengine(demo): keep 2.0"
    assert trailer(repo, "Loopengine-Task") == "demo"
    assert trailer(repo, "Loopengine-Run") == first["run_id"]
    assert trailer(repo, "Loopengine-Score") == "2.0"
    assert trailer(repo, "Loopengine-Baseline") == "1.0"  # measured before the candidate

    second = guarded().record
    assert second["status"] == "keep"
    assert commits(repo) == start + 2
    assert repo.log()[0] == "loopengine(demo): keep 3.0"
    assert trailer(repo, "Loopengine-Run") == second["run_id"]
    assert trailer(repo, "Loopengine-Baseline") == "2.0"
    # The message ends with the four trailers, in the contract's order.
    body = repo.git("log", "-1", "--format=%B").rstrip("\n").splitlines()
    assert body[-4:] == ["Loopengine-Task: demo", f"Loopengine-Run: {second['run_id']}",
                         "Loopengine-Score: 3.0", "Loopengine-Baseline: 2.0"]

    # The trailers find the keeps again, newest first.
    for rec in (first, second):
        found = repo.git("log", "--format=%H", f"--grep=^Loopengine-Run: {rec['run_id']}$")
        assert found.split() == [rec["commit"]]
    runs = repo.git("log", "--format=%(trailers:key=Loopengine-Run,valueonly)").split()
    assert runs == [second["run_id"], first["run_id"]]

    # A discard makes no commit.
    repo.write_task(default_task(mutator__command="true"))
    repo.commit("no-op mutator")
    assert guarded().record["status"] == "discard"
    assert commits(repo) == start + 3


def test_works_without_a_git_identity(repo: Repo, guarded) -> None:
    assert repo.git("config", "user.name", check=False) == ""
    assert repo.git("config", "user.email", check=False) == ""
    rec = guarded().record
    assert rec["status"] == "keep" and rec["commit"]
    assert repo.git("cat-file", "-t", rec["commit"]).strip() == "commit"
    assert repo.git("log", "-1", "--format=%an").strip()
    # A configured identity is the user's to use.
    repo.git("config", "user.name", "Ada Lovelace")
    repo.git("config", "user.email", "ada@example.com")
    rec = guarded().record
    assert rec["status"] == "keep"
    assert repo.git("log", "-1", "--format=%an <%ae>|%cn").strip() == (
        "Ada Lovelace <ada@example.com>|Ada Lovelace")


def test_detached_head_moves_and_no_branch_is_made(repo: Repo, guarded) -> None:
    main = repo.git("rev-parse", "main").strip()
    repo.git("checkout", "-q", "--detach")
    rec = guarded().record
    assert rec["status"] == "keep"
    assert repo.git("rev-parse", "HEAD").strip() == rec["commit"]
    assert repo.git("rev-parse", f"{rec['commit']}^").strip() == main
    assert repo.git("symbolic-ref", "-q", "HEAD", check=False) == ""
    assert repo.git("rev-parse", "main").strip() == main
    assert repo.git("for-each-ref", "--format=%(refname)", "refs/heads").split() == [
        "refs/heads/main"]
    assert porcelain(repo) == []


HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout",
         "reference-transaction", "post-index-change", "pre-auto-gc")


@pytest.mark.parametrize("where", [".git/hooks", "core.hooksPath"])
def test_user_hooks_never_run(repo: Repo, guarded, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "hook-ran"
    folder = repo.path / ".git/hooks" if where == ".git/hooks" else tmp_path / "my-hooks"
    folder.mkdir(parents=True, exist_ok=True)
    for name in HOOKS:
        hook = folder / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {shlex.quote(str(marker))}\nexit 1\n")
        hook.chmod(0o755)
    if where == "core.hooksPath":
        repo.git("config", "core.hooksPath", str(folder))
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    assert rec["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert not marker.exists(), f"hooks ran: {marker.read_text()}"


def test_commit_is_never_signed(repo: Repo, guarded, tmp_path: Path) -> None:
    marker = tmp_path / "gpg-ran"
    gpg = tmp_path / "fake-gpg"
    gpg.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\nexit 1\n")
    gpg.chmod(0o755)
    repo.git("config", "commit.gpgSign", "true")
    repo.git("config", "gpg.program", str(gpg))
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    assert "gpgsig" not in repo.git("cat-file", "commit", rec["commit"])
    assert not marker.exists()


# ---------------------------------------------------------------------------
# The user's work


def test_staged_unstaged_and_untracked_work_stays(repo: Repo, guarded) -> None:
    repo.write("docs.txt", "docs\n")
    repo.commit("docs")
    repo.write("README.md", "staged\n")
    repo.git("add", "README.md")
    repo.write("README.md", "staged\nthen more, unstaged\n")
    repo.write("docs.txt", "docs\nunstaged\n")
    repo.write("scratch/new.txt", "untracked\n")
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    assert repo.git("show", "--format=", "--name-only", "HEAD").split() == [NOTES]
    assert porcelain(repo) == ["MM README.md", " M docs.txt", "?? scratch/new.txt"]
    assert repo.git("diff", "--cached", "--name-only").split() == ["README.md"]
    assert repo.git("show", ":README.md") == "staged\n"
    assert repo.git("show", "HEAD:README.md") == "a project\n"
    assert repo.read("README.md") == "staged\nthen more, unstaged\n"
    assert repo.read("docs.txt") == "docs\nunstaged\n"
    assert repo.read("scratch/new.txt") == "untracked\n"
    assert repo.read(NOTES) == "first\nmore\n"


@pytest.mark.parametrize("staged", [False, True], ids=["unstaged", "staged"])
def test_uncommitted_artifact_edit_is_the_starting_point(
    repo: Repo, guarded, staged: bool
) -> None:
    repo.write(NOTES, "first\nmine\n")
    if staged:
        repo.git("add", NOTES)
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    # The candidate is measured from the user's version: one line more than it.
    assert rec["changed_lines"] == 1
    assert rec["diff_summary"] == "1 file changed, 1 insertion(+), 0 deletions(-)"
    assert rec["candidate_score"] == 3.0
    assert repo.read(NOTES) == "first\nmine\nmore\n"
    assert repo.git("show", f"HEAD:{NOTES}") == "first\nmine\nmore\n"
    assert porcelain(repo) == []


def test_commit_on_keep_false_writes_the_artifact_only(repo: Repo, guarded) -> None:
    repo.write_task(default_task(policy__commit_on_keep=False))
    repo.commit("no commits")
    head = repo.git("rev-parse", "HEAD")
    rec = guarded().record
    assert rec["status"] == "keep" and rec["commit"] is None
    assert repo.git("rev-parse", "HEAD") == head
    assert repo.read(NOTES) == "first\nmore\n"
    assert porcelain(repo) == [f" M {NOTES}"]
    assert repo.git("diff", "--cached") == ""
    # The kept content carries the baseline on.
    second = guarded().record
    assert second["status"] == "keep"
    assert second["baseline_score"] == 2.0 and second["candidate_score"] == 3.0
    assert repo.git("rev-parse", "HEAD") == head
    assert porcelain(repo) == [f" M {NOTES}"]


# ---------------------------------------------------------------------------
# Repositories of every kind


def demo_files(r: Repo) -> None:
    r.write(".gitignore", "/work/\n")
    r.write(NOTES, "first\n")
    r.write("README.md", "a project\n")
    r.write_task(default_task())


def test_repository_without_a_commit(tmp_path: Path, checked) -> None:
    r = Repo(tmp_path / "fresh")
    demo_files(r)
    r.git("add", "README.md")
    rec = checked(r).record
    assert rec["status"] == "keep", rec["reason"]
    assert rec["sandbox"] == "copy"
    assert rec["commit"] == r.git("rev-parse", "HEAD").strip()
    assert r.git("rev-parse", "main").strip() == rec["commit"]
    assert commits(r) == 1
    assert r.git("log", "-1", "--format=%P").strip() == ""
    assert r.git("ls-tree", "-r", "--name-only", "HEAD").split() == [NOTES]
    assert r.git("show", f"HEAD:{NOTES}") == "first\nmore\n"
    assert r.log() == ["loopengine(demo): keep 2.0"]
    # What the user staged stays staged and out of the commit; the rest stays untracked.
    assert porcelain(r) == ["A  README.md", "?? .gitignore", "?? tasks/demo/task.yaml"]
    # The next run has a commit to stand on: a worktree, and one commit more.
    again = checked(r).record
    assert again["status"] == "keep" and again["sandbox"] == "worktree"
    assert again["baseline_score"] == 2.0
    assert commits(r) == 2


def test_half_staged_artifact_without_a_commit_is_refused(tmp_path: Path, checked) -> None:
    r = Repo(tmp_path / "fresh")
    demo_files(r)
    r.git("add", NOTES)
    r.write(NOTES, "first\nunstaged\n")
    result = checked(r)
    rec = result.record
    assert result.code == 1
    assert (rec["status"], rec["crash_kind"]) == ("crash", "sandbox")
    assert "staged content differs" in rec["reason"]
    assert r.git("show", f":{NOTES}") == "first\n"
    assert r.read(NOTES) == "first\nunstaged\n"
    assert r.git("rev-parse", "-q", "--verify", "HEAD", check=False) == ""


def test_folder_that_is_not_a_repository(tmp_path: Path, checked) -> None:
    r = Repo(tmp_path / "plain", git=False)
    demo_files(r)
    first = checked(r)
    rec = first.record
    assert first.code == 0
    assert rec["status"] == "keep", rec["reason"]
    assert rec["sandbox"] == "copy" and rec["commit"] is None
    assert r.read(NOTES) == "first\nmore\n"
    assert not (r.path / ".git").exists()
    assert (r.path / rec["patch"]).is_file()
    second = checked(r).record
    assert second["status"] == "keep" and second["baseline_score"] == 2.0
    assert r.read(NOTES) == "first\nmore\nmore\n"


def test_task_folder_not_committed_yet(tmp_path: Path, checked) -> None:
    r = Repo(tmp_path / "repo")
    r.write(".gitignore", "/work/\n")
    r.write("README.md", "a project\n")
    r.commit()
    r.write(NOTES, "first\n")
    r.write_task(default_task())
    rec = checked(r).record
    assert rec["status"] == "keep", rec["reason"]
    assert rec["sandbox"] == "worktree"
    assert rec["changed_files"] == [NOTES]
    assert r.git("show", "--format=", "--name-only", "HEAD").split() == [NOTES]
    assert r.git("show", f"HEAD:{NOTES}") == "first\nmore\n"
    assert porcelain(r) == ["?? tasks/demo/task.yaml"]


def test_keep_in_a_linked_worktree_moves_its_branch_only(
    repo: Repo, tmp_path: Path, checked
) -> None:
    main = repo.git("rev-parse", "main").strip()
    repo.git("worktree", "add", "-q", "-b", "side", str(tmp_path / "linked"))
    linked = Repo(tmp_path / "linked", git=False)  # already a work tree of ``repo``
    rec = checked(linked).record
    assert rec["status"] == "keep", rec["reason"]
    assert repo.git("rev-parse", "side").strip() == rec["commit"]
    assert repo.git("rev-parse", "main").strip() == main
    assert repo.read(NOTES) == "first\n"
    assert linked.read(NOTES) == "first\nmore\n"
    assert (linked.path / "work/results.jsonl").is_file()
    assert not (repo.path / "work").exists()


def test_run_from_a_subfolder_uses_the_repository_root(repo: Repo, isolated_env: Path) -> None:
    sub = Repo(repo.path / "tasks/demo", git=False)
    before = snapshot(repo, isolated_env)
    result = sub.run(task="task.yaml")
    rec = result.record
    assert_guarantees(repo, before, isolated_env, rec)
    assert rec["status"] == "keep", rec["reason"]
    assert rec["changed_files"] == [NOTES]
    assert repo.results() == [rec]
    assert not (sub.path / "work").exists()


def test_paths_with_spaces_and_non_ascii_letters(repo: Repo, guarded) -> None:
    name = "tasks/demo/nötes and ideas.md"
    repo.write(name, "a\n")
    repo.write_task(default_task(
        artifacts__include=["nötes and ideas.md"],
        mutator__command=f"{PY} {BIN}/append_line.py 'nötes and ideas.md' more",
        scorer__command=f"{PY} {BIN}/score_lines.py 'nötes and ideas.md'"))
    repo.commit("unicode")
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    assert rec["changed_files"] == [name]
    assert repo.git("-c", "core.quotePath=false", "show", "--format=", "--name-only",
                    "HEAD").splitlines() == [name]
    assert repo.read(name) == "a\nmore\n"
    repo.git("apply", "--reverse", "--check", rec["patch"])


def test_main_tree_state_is_laid_over_the_sandbox(repo: Repo, guarded) -> None:
    repo.write(".gitignore", "/work/\n*.log\n")
    repo.write("data.txt", "data\n")
    repo.commit("more files")
    checks = ("grep -qx changed README.md && test ! -e data.txt && "
              "grep -qx extra extra/new.txt && test ! -e ignored.log")
    repo.write_task(default_task(
        mutator__command=f"{checks} && {PY} {BIN}/append_line.py {NOTES} more",
        mutator__cwd=".", runner__command=checks, runner__cwd="."))
    repo.commit("checking task")
    repo.write("README.md", "changed\n")
    (repo.path / "data.txt").unlink()
    repo.write("extra/new.txt", "extra\n")
    repo.write("ignored.log", "ignored\n")
    rec = guarded().record
    assert rec["status"] == "keep", (rec["reason"], rec["log_tail"])
    # The overlay is the starting state: none of it is part of the candidate.
    assert rec["changed_files"] == [NOTES]
    assert repo.git("show", "--format=", "--name-only", "HEAD").split() == [NOTES]
    assert porcelain(repo) == [" M README.md", " D data.txt", "?? extra/new.txt"]


def test_an_artifact_git_ignores_is_the_starting_point(tmp_path: Path, checked) -> None:
    r = Repo(tmp_path / "repo")
    r.write(".gitignore", "/work/\nnotes.md\n")
    r.write("README.md", "a project\n")
    r.write_task(default_task())
    r.commit()
    r.write(NOTES, "precious\nlocal\n")  # untracked and ignored, but the artifact
    rec = checked(r).record
    assert rec["status"] == "keep", rec["reason"]
    assert rec["changed_lines"] == 1 and rec["candidate_score"] == 3.0
    assert r.read(NOTES) == "precious\nlocal\nmore\n"
    assert r.git("show", f"HEAD:{NOTES}") == "precious\nlocal\nmore\n"


# ---------------------------------------------------------------------------
# The seed's entry point


def test_run_task_script_gives_the_same_record(
    repo: Repo, guarded, isolated_env: Path
) -> None:
    via_cli = guarded().record
    before = snapshot(repo, isolated_env)
    proc = subprocess.run(
        [PY, str(PROJECT / "scripts/run_task.py"), "--task", "tasks/demo/task.yaml"],
        cwd=repo.path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert_guarantees(repo, before, isolated_env, rec)
    assert list(rec) == list(via_cli)
    assert rec["status"] == "keep" and rec["baseline_score"] == 2.0
    assert rec["candidate_score"] == 3.0
    assert repo.results()[-1] == rec
    assert repo.log()[0] == "loopengine(demo): keep 3.0"
