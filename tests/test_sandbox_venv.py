"""The project's ``.venv`` in the steps: linked in as it is, never copied, never
validated, never rebuilt; the project's own packages import from the sandbox."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import Repo, default_task

SCORE_PKG = ("import json, os, pkg; print(json.dumps({'score': pkg.VALUE, 'metrics': "
             "{'uv_no_sync': os.environ.get('UV_NO_SYNC'), 'prefix': __import__('sys').prefix,"
             " 'pkg': pkg.__file__}}))")


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            st = path.lstat()
            h.update(f"{path.relative_to(root)}\0{st.st_mode}\0{st.st_mtime_ns}\0".encode())
            if path.is_file() and not path.is_symlink():
                h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def venv_repo(repo: Repo) -> Repo:
    """The demo repository with a src/ package, a .venv (ignored) that has it installed
    editable (a .pth line naming the main tree's src/), and a task on the package."""
    repo.write(".gitignore", "/work/\n/.venv/\n")
    repo.write("src/pkg/__init__.py", "VALUE = 1\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo.path / ".venv")],
                   check=True)
    site = next((repo.path / ".venv/lib").glob("python*/site-packages"))
    (site / "_pkg_editable.pth").write_text(f"{repo.path / 'src'}\n")
    task = default_task()
    task["artifacts"] = {"include": ["../../src/pkg/__init__.py"],
                         "max_files_per_iteration": 1}
    task["mutation"]["allowed_file_types"] = [".py"]
    task["mutator"]["command"] = "sed -i 's/VALUE = 1/VALUE = 2/' src/pkg/__init__.py"
    task["mutator"]["cwd"] = "."
    task["runner"] = {"command": "test -L .venv && .venv/bin/python -c 'import pkg'",
                      "cwd": ".", "timeout_seconds": 30}
    task["scorer"]["command"] = f'.venv/bin/python -c "{SCORE_PKG}"'
    task["scorer"]["cwd"] = "."
    repo.write_task(task)
    repo.commit("a package")
    return repo


def test_a_step_uses_the_projects_venv_and_imports_the_candidates_code(venv_repo: Repo,
                                                                        guarded) -> None:
    before = tree_digest(venv_repo.path / ".venv")
    rec = guarded().record
    assert (rec["status"], rec["candidate_score"]) == ("keep", 2.0), rec["reason"]
    metrics = rec["metrics"]
    assert metrics["uv_no_sync"] == "1"
    assert metrics["prefix"].endswith("/tree/.venv")  # the link, in the sandbox
    # The editable install names the main tree's src/: the step imports the sandbox's.
    assert metrics["pkg"].endswith("/tree/src/pkg/__init__.py")
    assert not metrics["pkg"].startswith(str(venv_repo.path))
    assert venv_repo.read("src/pkg/__init__.py") == "VALUE = 2\n"
    assert tree_digest(venv_repo.path / ".venv") == before
    assert venv_repo.git("status", "--porcelain") == ""


def test_a_mutator_cannot_swap_the_venv_for_its_own(venv_repo: Repo) -> None:
    venv_repo.write("tools/hostile.sh", "sed -i 's/VALUE = 1/VALUE = 2/' src/pkg/__init__.py\n"
                    "rm .venv\nmkdir -p .venv/bin\n"
                    "printf '#!/bin/sh\\necho {\\\"score\\\": 99}\\n' > .venv/bin/python\n"
                    "chmod +x .venv/bin/python\n")
    task = yaml.safe_load(venv_repo.read("tasks/demo/task.yaml"))
    task["mutator"]["command"] = "sh tools/hostile.sh"
    venv_repo.write_task(task)
    venv_repo.commit("a hostile mutator")
    rec = venv_repo.run().record
    assert (rec["status"], rec["candidate_score"]) == ("keep", 2.0), rec
    assert rec["changed_files"] == ["src/pkg/__init__.py"]
    assert (venv_repo.path / ".venv").is_dir() and not (venv_repo.path / ".venv").is_symlink()


def test_without_a_venv_nothing_is_linked(repo: Repo) -> None:
    repo.write_task(default_task(runner__command="test ! -e ../../.venv"))
    repo.commit("runner checks")
    rec = repo.run().record
    assert rec["status"] == "keep", rec["reason"]


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
def test_uv_run_in_a_step_does_not_rebuild_the_environment(repo: Repo) -> None:
    repo.write(".gitignore", "/work/\n/.venv/\n")
    repo.write("pyproject.toml", '[project]\nname = "demo"\nversion = "0.1.0"\n'
               'requires-python = ">=3.8"\ndependencies = []\n')
    env = {**os.environ, "UV_OFFLINE": "1", "UV_PYTHON": sys.executable}
    synced = subprocess.run(["uv", "sync", "-q"], cwd=repo.path, env=env,
                            capture_output=True, text=True, check=False)
    if synced.returncode != 0:
        pytest.skip(f"uv sync does not work here: {synced.stderr}")
    repo.write_task(default_task(
        runner__command="uv run python -c 'import sys; print(sys.prefix)' "
                        "&& test -L ../../.venv"))
    repo.commit("a uv project")
    before = tree_digest(repo.path / ".venv")
    result = repo.run(env={"UV_OFFLINE": "1"})
    rec = result.record
    assert rec["status"] == "keep", (rec["reason"], rec["log_tail"])
    log = (repo.path / "work/runs" / rec["run_id"] / "runner.log").read_text()
    assert "/tree/.venv" in log
    assert "Creating virtual environment" not in log and "Installed" not in log
    assert tree_digest(repo.path / ".venv") == before


def test_under_bwrap_a_step_cannot_change_the_projects_venv(venv_repo: Repo) -> None:
    task = yaml.safe_load(venv_repo.read("tasks/demo/task.yaml"))
    task["runner"]["command"] = "touch .venv/planted; test ! -e .venv/planted"
    venv_repo.write_task(task)
    venv_repo.commit("a runner that writes into the venv")
    rec = venv_repo.run().record
    if rec.get("isolation") != "bwrap":
        pytest.skip("bubblewrap does not work here: a step can write through the link")
    assert rec["status"] == "keep", (rec["reason"], rec["log_tail"])
    assert not (venv_repo.path / ".venv/planted").exists()
