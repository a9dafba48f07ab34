"""Where the repository and the task file are: ``verify`` of a keep whose task folder was
never committed, ``--repo`` at a subfolder of a repository, and a ``--task`` path read
from another directory."""

from __future__ import annotations

import subprocess
import sys

from conftest import Repo


def test_verify_after_init_and_run_with_the_task_folder_uncommitted(repo: Repo) -> None:
    assert repo.run("fresh", command="init").code == 0
    assert repo.git("status", "--porcelain", "--", "tasks/fresh") == "?? tasks/fresh/\n"
    keeps = []
    for _ in range(4):
        rec = repo.run(task="tasks/fresh/task.yaml").record
        assert rec["status"] != "crash", rec["reason"]
        if rec["status"] == "keep" and rec["commit"]:
            keeps.append(rec)
    assert len(keeps) >= 2
    kept = keeps[-1]
    assert repo.git("cat-file", "-t", f"{kept['commit']}:tasks/fresh/notes.md") == "blob\n"
    assert repo.git("cat-file", "-e", f"{kept['commit']}:tasks/fresh/task.yaml",
                    check=False) == ""
    result = repo.run(kept["commit"], command="verify")
    assert result.code in (0, 1), result.stdout + result.stderr
    assert "no task file" not in result.stderr
    assert "loopengine-" not in result.stdout + result.stderr  # no sandbox path shown
    assert ("note: the task file tasks/fresh/task.yaml is not in "
            f"{kept['commit'][:12]}: the task and your uncommitted files") in result.stdout
    assert "re-measured, parent and commit interleaved" in result.stdout
    # With the task named, from the task's own folder: the same.
    named = subprocess.run([sys.executable, "-m", "loopengine", "verify", kept["commit"],
                            "--task", "task.yaml"], cwd=repo.path / "tasks/fresh",
                           capture_output=True, text=True, check=False)
    assert named.returncode in (0, 1), named.stdout + named.stderr
    assert repo.git("status", "--porcelain", "--", "tasks/fresh").splitlines() == [
        f"?? tasks/fresh/{name}" for name in ("evaluate.py", "mutate.py", "rubric.json",
                                              "score.py", "task.yaml")]
    # The first keep's parent has no notes.md at all (it was untracked): the baseline
    # is the keep without its candidate patch.
    first = repo.run(keeps[0]["commit"], command="verify")
    assert first.code == 0, first.stdout + first.stderr
    assert (f"note: the baseline is {keeps[0]['commit'][:12]} without its candidate patch"
            in first.stdout)


def test_repo_at_a_subfolder_of_a_repository_is_refused_and_writes_nothing(repo: Repo) -> None:
    sub = repo.path / "tasks"
    before = repo.git("status", "--porcelain", "--ignored")
    for command in (["run", "--task", "demo/task.yaml"], ["validate", "--task",
                                                          "demo/task.yaml"],
                    ["init", "other"], ["verify", "HEAD"]):
        proc = subprocess.run([sys.executable, "-m", "loopengine", *command, "--repo", "."],
                              cwd=sub, capture_output=True, text=True, check=False)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert (f". is inside the git repository {repo.path}, not its top level; use "
                f"--repo {repo.path}") in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (sub / "work").exists()
    assert repo.git("status", "--porcelain", "--ignored") == before
    # Without --repo, a subfolder means its repository, as ever.
    proc = subprocess.run([sys.executable, "-m", "loopengine", "run", "--task",
                           "demo/task.yaml"], cwd=sub, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert not (sub / "work").exists()


def test_a_task_path_from_another_directory_names_where_it_was_looked_for(repo: Repo,
                                                                           tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "loopengine", "run", "--repo",
                           str(repo.path), "--task", "tasks/demo/task.yaml"],
                          cwd=elsewhere, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert ("tasks/demo/task.yaml: no such task file (the path was resolved against the "
            f"current directory {elsewhere}, not the repository {repo.path}; did you mean "
            "../repo/tasks/demo/task.yaml?)") in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "loopengine", "validate", "--repo",
                           str(repo.path), "--task", "../repo/tasks/demo/task.yaml"],
                          cwd=elsewhere, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
