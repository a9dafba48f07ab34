"""Issue 15.4: concurrent campaigns on different tasks of one repository.

With the default fingerprint (``policy.fingerprint: []``) the artifacts of the repository's
other tasks (every ``task.yaml`` in the tree) do not count, so a keep of task B leaves task
A's stored baseline current; a change to what evaluates A (its scorer script, its data, its
runner) still makes A's baseline stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import BIN, PY, Repo, default_task


def _two_tasks(repo: Repo) -> None:
    """Tasks a and b, each appending a line to its own notes.md; a's scorer is a script in
    the repository (eval/score_a.py) that also reads a data file (data/a.txt)."""
    repo.write("eval/score_a.py", (BIN / "score_lines.py").read_text())
    repo.write("data/a.txt", "data\n")
    for name in ("a", "b"):
        scorer = f"{PY} {BIN}/score_lines.py notes.md"
        if name == "a":
            scorer = f"{PY} ../../eval/score_a.py notes.md --data=../../data/a.txt"
        task = default_task(
            id=name,
            mutator__command=f"{PY} {BIN}/append_line.py notes.md more",
            mutator__cwd=f"tasks/{name}",
            runner__cwd=f"tasks/{name}",
            scorer__command=scorer,
            scorer__cwd=f"tasks/{name}",
        )
        repo.write(f"tasks/{name}/notes.md", "first\n")
        repo.write_task(task, rel=f"tasks/{name}/task.yaml")
    repo.commit("two tasks")


def _run(repo: Repo, name: str) -> dict:
    result = repo.run(task=f"tasks/{name}/task.yaml")
    assert result.code == 0, result.stderr
    return result.record


def test_a_keep_of_another_task_leaves_the_baseline_current(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "two")
    repo.write(".gitignore", "/work/\n")
    _two_tasks(repo)
    first = _run(repo, "a")
    assert first["status"] == "keep" and first["baseline_source"] == "remeasured"
    b = _run(repo, "b")
    assert b["status"] == "keep" and b["commit"]
    assert repo.git("show", "--name-only", "--format=", "HEAD").split() == ["tasks/b/notes.md"]
    # Without the change this was "remeasured": b's kept artifact is a tracked file.
    second = _run(repo, "a")
    assert second["status"] == "keep"
    assert second["baseline_source"] == "stored"
    assert second["fingerprint"] == first["fingerprint"]
    assert second["baseline_score"] == first["candidate_score"]
    assert second["runs"] == 1
    # status agrees: a's baseline is current after b's keeps.
    _run(repo, "b")
    status = repo.run("--json", command="status")
    assert status.code == 0, status.stderr
    tasks = {t["task_id"]: t for t in json.loads(status.stdout)["tasks"]}
    assert tasks["a"]["baseline"]["current"] is True, tasks["a"]
    assert tasks["a"]["baseline"]["fingerprint"] == first["fingerprint"]
    # An uncommitted edit of b's artifact is not a's business either.
    repo.write("tasks/b/notes.md", "first\nedited\n")
    status = repo.run("--json", command="status")
    tasks = {t["task_id"]: t for t in json.loads(status.stdout)["tasks"]}
    assert tasks["a"]["baseline"]["current"] is True, tasks["a"]
    assert _run(repo, "a")["baseline_source"] == "stored"


def test_an_edit_to_the_scorer_script_still_makes_the_baseline_stale(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "two")
    repo.write(".gitignore", "/work/\n")
    _two_tasks(repo)
    first = _run(repo, "a")
    _run(repo, "b")
    repo.write("eval/score_a.py", (BIN / "score_lines.py").read_text() + "# v2\n")
    stale = _run(repo, "a")  # uncommitted: the sandbox has it too
    assert stale["baseline_source"] == "remeasured"
    assert stale["fingerprint"] != first["fingerprint"]
    repo.commit("scorer v2")
    assert _run(repo, "a")["baseline_source"] == "stored"
    repo.write("data/a.txt", "other data\n")
    repo.commit("data v2")
    assert _run(repo, "a")["baseline_source"] == "remeasured"


def test_an_other_tasks_broad_pattern_never_hides_what_evaluates_this_task(
        tmp_path: Path) -> None:
    from loopengine import fingerprint, git
    from loopengine.task import load_task

    repo = Repo(tmp_path / "two")
    _two_tasks(repo)
    # b claims every file of the repository as its artifacts (a bad but valid task).
    repo.write_task(default_task(id="b", artifacts__include=["../../**"]),
                    rel="tasks/b/task.yaml")
    repo.write("tasks/c/task.yaml", "not: [a task\n")  # unreadable: contributes nothing
    repo.write("tasks/d/task.yaml", json.dumps({"artifacts": {"include": ["x/*.md"]}}))
    repo.write("tasks/d/x/d.md", "d\n")
    repo.write("tasks/a/helper.txt", "a's own folder\n")
    repo.write("README.md", "readme\n")
    repo.commit("more tasks")
    task = load_task(repo.path / "tasks/a/task.yaml", repo.path)
    ctx = git.Context(repo.path)
    tree = git.out(ctx, "rev-parse", "HEAD^{tree}")
    paths = [e.decode().split("\t")[1] for e in fingerprint.files(task, ctx, tree)]
    # Named by a's scorer, or in a's folder: always counted; the rest is b's (or d's).
    assert paths == ["data/a.txt", "eval/score_a.py", "tasks/a/helper.txt"]
    repo.write_task(default_task(id="b"), rel="tasks/b/task.yaml")
    repo.commit("b narrowed")
    tree = git.out(ctx, "rev-parse", "HEAD^{tree}")
    paths = [e.decode().split("\t")[1] for e in fingerprint.files(task, ctx, tree)]
    assert paths == ["README.md", "data/a.txt", "eval/score_a.py", "tasks/a/helper.txt",
                     "tasks/b/task.yaml", "tasks/c/task.yaml", "tasks/d/task.yaml"]
