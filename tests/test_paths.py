"""paths.write_problem: the engine-independent rule for every path the engine writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loopengine.paths import write_problem
from tests.conftest import Repo


@pytest.mark.parametrize("rel", [
    "work/results.jsonl",
    "results.jsonl",
    "logs/new/folder/results.jsonl",  # folders that do not exist yet are made
    "tasks/demo/out.jsonl",
    "work/other.jsonl",
    "tasks/work/runs/x.jsonl",  # only the repository's own work/ is the engine's
])
def test_safe_places(repo: Repo, rel: str) -> None:
    assert write_problem(repo.path, rel) is None


@pytest.mark.parametrize("rel, problem", [
    (".git/config", "is inside .git/"),
    (".git/HEAD", "is inside .git/"),
    (".git/hooks/pre-commit", "is inside .git/"),
    (".git", "is .git/ itself"),
    (".GIT/config", "is inside .GIT/"),
    ("sub/.git/config", "is inside .git/"),
    (".venv/bin/activate", "is inside .venv/"),
    (".gitignore", "a file git reads"),
    ("tasks/.gitattributes", "a file git reads"),
    ("/etc/passwd", "must be relative"),
    ("../elsewhere.jsonl", "is outside the repository"),
    ("work/../../x.jsonl", "is outside the repository"),
    (".", "is a directory"),
    ("tasks", "is a directory"),
    ("tasks/demo/", "is a directory"),
    ("README.md/x.jsonl", "has a parent that is a file"),
    ("", "is not a path"),
    ("work/baselines/demo.json", "is the engine's own state (work/baselines/)"),
    ("work/runs/x/record.json", "is the engine's own state (work/runs/)"),
    ("work/runs", "is the engine's own state (work/runs/)"),
    ("work/loops/l/state.json", "is the engine's own state (work/loops/)"),
    ("work/.lock", "is one of the engine's lock files"),
])
def test_unsafe_places(repo: Repo, rel: str, problem: str) -> None:
    found = write_problem(repo.path, rel)
    assert found is not None and problem in found, found


def test_symlink_into_git_dir(repo: Repo) -> None:
    (repo.path / "work").mkdir()
    os.symlink("../.git/hooks/pre-commit", repo.path / "work" / "results.jsonl")
    found = write_problem(repo.path, "work/results.jsonl")
    assert found is not None and ".git" in found and "symlinks" in found


def test_symlinked_folder_outside_the_repository(repo: Repo, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo.path / "work")
    found = write_problem(repo.path, "work/results.jsonl")
    assert found == "is outside the repository (after resolving symlinks)"


def test_dangling_symlink_pointing_outside(repo: Repo, tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere" / "r.jsonl", repo.path / "r.jsonl")
    assert "outside the repository" in (write_problem(repo.path, "r.jsonl") or "")


def test_symlink_loop(repo: Repo) -> None:
    os.symlink("b", repo.path / "a")
    os.symlink("a", repo.path / "b")
    assert write_problem(repo.path, "a") is not None


def test_executable_file_and_fifo(repo: Repo) -> None:
    repo.write("hooks/pre-commit", "#!/bin/sh\n", mode=0o755)
    assert write_problem(repo.path, "hooks/pre-commit") == "is an executable file"
    os.mkfifo(repo.path / "pipe")
    assert write_problem(repo.path, "pipe") == "is not a regular file"


def test_git_dir_of_a_linked_worktree(repo: Repo, tmp_path: Path) -> None:
    other = tmp_path / "other"
    repo.git("worktree", "add", "-q", str(other))
    git_file = (other / ".git").read_text().split(":", 1)[1].strip()
    os.symlink(git_file, other / "gitdir-link")
    found = write_problem(other, "gitdir-link/HEAD")
    assert found is not None
    assert write_problem(other, "work/results.jsonl") is None
