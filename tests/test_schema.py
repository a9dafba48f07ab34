"""The task schema on pydantic: every problem at once, and a results path that is safe."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopengine.errors import TaskError
from loopengine.task import load_task

TASK = "tasks/x/task.yaml"
MINIMAL: dict[str, Any] = {
    "id": "t",
    "description": "",
    "artifacts": {"include": ["a.md"]},
    "mutation": {},
    "mutator": {"command": "m"},
    "runner": {"command": "r"},
    "scorer": {"command": "s"},
    "objective": {},
    "constraints": [],
    "policy": {},
    "budget": {},
    "logging": {},
}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    (repo / "tasks" / "x").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    return repo


def problems(root: Path, document: object) -> list[str]:
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    (root / TASK).write_text(text)
    with pytest.raises(TaskError) as info:
        load_task(TASK, root)
    assert str(info.value) == info.value.problems[0]
    return info.value.problems


def with_(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = document
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return document


def test_every_problem_at_once_in_the_order_a_person_fixes_them(root: Path) -> None:
    document = with_(runner={"command": "", "timeout_seconds": True, "cwd": "/abs"},
                     policy={"repeats": 0, "confidence": 2}, budget=...,
                     constraints=[{"metric": "a"}, {"metric": "b", "maxx": 1}])
    document["extras"] = 1
    assert problems(root, document) == [
        f"{TASK}: extras: unknown key",
        f"{TASK}: runner.command: must not be empty",
        f"{TASK}: runner.cwd: must be relative to the repository root, got '/abs'",
        f"{TASK}: runner.timeout_seconds: expected a number, got bool",
        f"{TASK}: constraints[0]: needs min or max (or both)",
        f"{TASK}: constraints[1].maxx: unknown key (did you mean max?)",
        f"{TASK}: policy.repeats: must be >= 1, got 0",
        f"{TASK}: policy.confidence: must be < 1, got 2",
        f"{TASK}: budget: missing required section",
    ]


def test_a_typo_explains_the_missing_key_which_is_not_reported_again(root: Path) -> None:
    document = with_(runner={"comand": "r"}, scorer={"command": "s", "timeout_secs": 1})
    assert problems(root, document) == [
        f"{TASK}: runner.comand: unknown key (did you mean command?)",
        f"{TASK}: scorer.timeout_secs: unknown key (did you mean timeout_seconds?)",
    ]


def test_several_bad_items_of_a_list(root: Path) -> None:
    document = with_(artifacts={"include": ["ok.md", "/abs", 3, " "]})
    assert problems(root, document) == [
        f"{TASK}: artifacts.include[1]: must be relative to the task directory, got '/abs'",
        f"{TASK}: artifacts.include[2]: expected a string, got integer",
        f"{TASK}: artifacts.include[3]: must not be empty",
    ]


def test_a_yaml_error_is_one_problem(root: Path) -> None:
    assert problems(root, "id: [x\n") == [
        f"{TASK}: invalid YAML: while parsing a flow sequence, expected ',' or ']', "
        "but got '<stream end>' (line 2, column 1)"
    ]


# --- issue 9, point 5: logging.results_path must be a safe place -------------------------


@pytest.mark.parametrize(("path", "problem"), [
    (".git/config", "is inside .git/"),
    (".git/HEAD", "is inside .git/"),
    (".git/hooks/pre-commit", "is inside .git/"),
    (".git", "is .git/ itself"),
    ("tasks/x/task.yaml", "is the task file"),
    ("tasks/x/a.md", "is an artifact (artifacts.include)"),
    ("tasks", "is a directory"),
    ("tracked.txt", "is a file git tracks"),
    (".gitignore", "is .gitignore, a file git reads"),
])  # fmt: skip
def test_results_path_that_is_not_a_safe_place(root: Path, path: str, problem: str) -> None:
    (root / "tracked.txt").write_text("mine\n")
    subprocess.run(["git", "add", "tracked.txt"], cwd=root, check=True)
    (root / "tasks" / "x" / "a.md").write_text("artifact\n")
    found = problems(root, with_(logging={"results_path": path}))
    assert found == [f"{TASK}: logging.results_path: {problem}, got {path!r}"]


def test_results_path_through_a_symlink(root: Path, tmp_path: Path) -> None:
    os.symlink("../.git/hooks/pre-commit", root / "tasks" / "hook")
    found = problems(root, with_(logging={"results_path": "tasks/hook"}))
    assert found == [f"{TASK}: logging.results_path: is inside .git/ (after resolving "
                     "symlinks), got 'tasks/hook'"]
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "logs")
    found = problems(root, with_(logging={"results_path": "logs/r.jsonl"}))
    assert found == [f"{TASK}: logging.results_path: is outside the repository (after "
                     "resolving symlinks), got 'logs/r.jsonl'"]


def test_a_symlink_onto_an_artifact_or_the_task_file(root: Path) -> None:
    (root / "tasks" / "x" / "a.md").write_text("artifact\n")
    os.symlink("x/a.md", root / "tasks" / "r.jsonl")
    found = problems(root, with_(logging={"results_path": "tasks/r.jsonl"}))
    assert found == [f"{TASK}: logging.results_path: is an artifact (artifacts.include), "
                     "got 'tasks/r.jsonl'"]
    os.symlink("x/task.yaml", root / "tasks" / "t.jsonl")
    found = problems(root, with_(logging={"results_path": "tasks/t.jsonl"}))
    assert found == [f"{TASK}: logging.results_path: is the task file, got 'tasks/t.jsonl'"]


def test_results_path_problem_comes_with_the_others(root: Path) -> None:
    found = problems(root, with_(logging={"results_path": ".git/config"}, runner={"command": 1}))
    assert found == [
        f"{TASK}: runner.command: expected a string, got integer",
        f"{TASK}: logging.results_path: is inside .git/, got '.git/config'",
    ]


def test_an_ordinary_results_path_is_fine(root: Path) -> None:
    (root / "work").mkdir()
    (root / "work" / "results.jsonl").write_text("")
    (root / TASK).write_text(yaml.safe_dump(with_(logging={"results_path": "logs/r.jsonl"})))
    assert load_task(TASK, root).results_path == "logs/r.jsonl"
    (root / TASK).write_text(yaml.safe_dump(MINIMAL))
    assert load_task(TASK, root).results_path == "work/results.jsonl"


def test_outside_a_git_repository_nothing_is_tracked(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plain" / "tasks" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "plain")
    (tmp_path / "plain" / "notes.txt").write_text("x\n")
    Path(TASK).write_text(yaml.safe_dump(with_(logging={"results_path": "notes.txt"})))
    assert load_task(TASK, Path(".")).results_path == "notes.txt"


def test_the_run_path_does_not_import_pydantic_until_a_task_is_loaded() -> None:
    code = ("import sys, loopengine.task, loopengine.decide, loopengine.score; "
            "print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
