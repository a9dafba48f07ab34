"""``loopengine history``: the keep commits, read back from their trailers."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_support import invoke, run_ok, table
from conftest import Repo, default_task

COLUMNS = ("commit", "date", "task", "score", "baseline", "delta")


def commit_date(repo: Repo, sha: str) -> str:
    return repo.git("show", "-s", "--format=%cI", sha).strip()


@pytest.fixture
def climbed(repo: Repo) -> list[dict]:
    """Two keeps and a discard of the demo task."""
    first, second = run_ok(repo), run_ok(repo)
    repo.write_task(default_task(mutator__command="true"))
    repo.commit("no-op mutator")
    third = run_ok(repo)
    assert [r["status"] for r in (first, second, third)] == ["keep", "keep", "discard"]
    return [first, second]


def test_history_is_a_table_of_keeps_newest_first(repo: Repo, climbed: list[dict]) -> None:
    first, second = climbed
    result = invoke("history", "--repo", str(repo.path))
    assert result.exit_code == 0, result.output
    assert result.stdout == table(COLUMNS, [
        [second["commit"][:12], commit_date(repo, second["commit"]), "demo", "3.0", "2.0", "+1"],
        [first["commit"][:12], commit_date(repo, first["commit"]), "demo", "2.0", "1.0", "+1"],
    ])
    assert result.stderr == ""


def test_history_json_is_one_object_per_line(repo: Repo, climbed: list[dict]) -> None:
    first, second = climbed
    result = invoke("history", "--json", "--repo", str(repo.path))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {"commit": second["commit"], "date": commit_date(repo, second["commit"]),
         "task": "demo", "run": second["run_id"], "score": 3.0, "baseline": 2.0, "delta": 1.0},
        {"commit": first["commit"], "date": commit_date(repo, first["commit"]),
         "task": "demo", "run": first["run_id"], "score": 2.0, "baseline": 1.0, "delta": 1.0},
    ]


def test_history_reads_the_commits_not_the_results_file(repo: Repo, climbed: list[dict]) -> None:
    shutil.rmtree(repo.path / "work")
    lines = invoke("history", "--json", "--repo", str(repo.path)).stdout.splitlines()
    assert [json.loads(line)["commit"] for line in lines] == [r["commit"] for r in climbed[::-1]]


def test_history_filters_by_task_and_keeps_other_tasks_apart(repo: Repo) -> None:
    run_ok(repo)
    repo.write("tasks/other/notes.md", "a\n")
    repo.write_task(default_task(id="other", mutator__cwd="tasks/other",
                                 runner__cwd="tasks/other", scorer__cwd="tasks/other"),
                    rel="tasks/other/task.yaml")
    repo.commit("another task")
    other = run_ok(repo, task="tasks/other/task.yaml")
    assert other["status"] == "keep"
    both = invoke("history", "--json", "--repo", str(repo.path)).stdout.splitlines()
    assert [json.loads(line)["task"] for line in both] == ["other", "demo"]
    only = invoke("history", "--task", "other", "--json", "--repo", str(repo.path))
    assert [json.loads(line)["commit"] for line in only.stdout.splitlines()] == [other["commit"]]
    none = invoke("history", "--task", "nope", "--repo", str(repo.path))
    assert none.stdout == table(COLUMNS, [])


def test_only_real_trailers_count(repo: Repo) -> None:
    # A person's commit that quotes a trailer in its body is not a keep ...
    repo.write("README.md", "changed\n")
    repo.commit("docs\n\nLoopengine-Task: demo\nLoopengine-Run: quoted\n\nand a last paragraph")
    # ... but a commit whose message ends with the trailers is, whoever made it.
    repo.write("README.md", "again\n")
    repo.commit("by hand\n\nLoopengine-Task: manual\nLoopengine-Run: r1\n"
                "Loopengine-Score: 0.5\nLoopengine-Baseline: 0.25")
    lines = invoke("history", "--json", "--repo", str(repo.path)).stdout.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"commit": repo.git("rev-parse", "HEAD").strip(),
         "date": commit_date(repo, "HEAD"), "task": "manual", "run": "r1",
         "score": 0.5, "baseline": 0.25, "delta": 0.25}]


def test_history_is_immune_to_the_users_git_config(repo: Repo, climbed: list[dict]) -> None:
    expected = invoke("history", "--repo", str(repo.path)).stdout
    for key, value in [("color.ui", "always"), ("log.showSignature", "true"),
                       ("grep.patternType", "fixed"), ("format.pretty", "oneline"),
                       ("log.decorate", "full"), ("i18n.logOutputEncoding", "ISO-8859-1"),
                       ("core.pager", "false"), ("log.date", "relative")]:
        repo.git("config", key, value)
    assert invoke("history", "--repo", str(repo.path)).stdout == expected


def test_history_from_a_subfolder_and_before_the_first_commit(tmp_path, repo: Repo,
                                                               climbed: list[dict]) -> None:
    inside = invoke("history", "--json", cwd=repo.path / "tasks" / "demo")
    assert len(inside.stdout.splitlines()) == 2
    unborn = Repo(tmp_path / "unborn")
    result = invoke("history", "--repo", str(unborn.path))
    assert (result.exit_code, result.stdout) == (0, table(COLUMNS, []))


def test_history_outside_git_is_an_error(tmp_path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = invoke("history", "--repo", str(plain))
    assert result.exit_code == 1
    assert result.stderr == (f"loopengine: {plain} is not a git repository: history reads the "
                             "keep commits' trailers (use `loopengine results` for the "
                             "records)\n")
