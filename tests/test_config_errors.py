"""Bad task files and damaged state: one JSON record, one line on stderr, nothing touched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import DELETE, PY, Repo, Result, default_task
from contract_checks import check_record, no_leftovers, stderr_line

TASK = "tasks/demo/task.yaml"

# name -> (the task file's text, the exact message after "loopengine: ")
BAD_TASKS: dict[str, tuple[str, str]] = {
    "unknown key": (
        yaml.safe_dump(default_task(runner__timeout_secs=5)),
        f"{TASK}: runner.timeout_secs: unknown key (did you mean timeout_seconds?)",
    ),
    "unknown nested key": (
        yaml.safe_dump(default_task(scorer__parse__scorefield="score")),
        f"{TASK}: scorer.parse.scorefield: unknown key (did you mean score_field?)",
    ),
    "unknown key in a list item": (
        yaml.safe_dump(default_task(constraints=[{"metric": "bytes", "maxx": 1}])),
        f"{TASK}: constraints[0].maxx: unknown key (did you mean max?)",
    ),
    "unknown section": (
        yaml.safe_dump({**default_task(), "extras": {}}),
        f"{TASK}: extras: unknown key",
    ),
    "wrong type": (
        yaml.safe_dump(default_task(runner__timeout_seconds="fast")),
        f"{TASK}: runner.timeout_seconds: expected a number, got string",
    ),
    "bool for a number": (
        yaml.safe_dump(default_task(mutation__max_changed_lines=True)),
        f"{TASK}: mutation.max_changed_lines: expected an integer, got bool",
    ),
    "string for a list": (
        yaml.safe_dump(default_task(artifacts__include="notes.md")),
        f"{TASK}: artifacts.include: expected a list, got string",
    ),
    "bad enum": (
        yaml.safe_dump(default_task(objective__direction="up")),
        f"{TASK}: objective.direction: expected one of maximize, minimize, got 'up'",
    ),
    "zero timeout": (
        yaml.safe_dump(default_task(mutator__timeout_seconds=0)),
        f"{TASK}: mutator.timeout_seconds: must be > 0, got 0",
    ),
    "missing section": (
        yaml.safe_dump(default_task(budget=DELETE)),
        f"{TASK}: budget: missing required section",
    ),
    "missing command": (
        yaml.safe_dump(default_task(runner__command=DELETE)),
        f"{TASK}: runner.command: missing required key",
    ),
    "bad id": (
        yaml.safe_dump(default_task(id="my task")),
        f"{TASK}: id: must match [A-Za-z0-9._-]+, got 'my task'",
    ),
    "absolute cwd": (
        yaml.safe_dump(default_task(runner__cwd="/tmp")),
        f"{TASK}: runner.cwd: must be relative to the repository root, got '/tmp'",
    ),
    "cwd with ..": (
        yaml.safe_dump(default_task(mutator__cwd="tasks/../..")),
        f"{TASK}: mutator.cwd: must not contain '..'",
    ),
    "include escaping the repo": (
        yaml.safe_dump(default_task(artifacts__include=["../../../outside.md"])),
        f"{TASK}: artifacts.include[0]: resolves outside the repository, "
        "got '../../../outside.md'",
    ),
    "absolute include": (
        yaml.safe_dump(default_task(artifacts__include=["notes.md", "/etc/passwd"])),
        f"{TASK}: artifacts.include[1]: must be relative to the task directory, "
        "got '/etc/passwd'",
    ),
    "include into .git": (
        yaml.safe_dump(default_task(artifacts__include=["../../.git/config"])),
        f"{TASK}: artifacts.include[0]: must not point into .git/, got '../../.git/config'",
    ),
    "include into work": (
        yaml.safe_dump(default_task(artifacts__include=["../../work/*.md"])),
        f"{TASK}: artifacts.include[0]: must not point into work/, got '../../work/*.md'",
    ),
    "bad YAML": (
        "id: [demo\n",
        f"{TASK}: invalid YAML: while parsing a flow sequence, expected ',' or ']', "
        "but got '<stream end>' (line 2, column 1)",
    ),
    "duplicate key": (
        "id: demo\nid: other\n",
        f"{TASK}: id: duplicate key",
    ),
    "not a mapping": ("- id: demo\n", f"{TASK}: the task file must be a mapping, got list"),
    "empty file": ("", f"{TASK}: the task file is empty"),
    "not UTF-8": ("id: d\xe9mo\n".encode("latin-1").decode("utf-8", "surrogateescape"),
                  f"{TASK}: the task file is not UTF-8 (byte 5)"),
}


def write_raw(repo: Repo, text: str, rel: str = TASK) -> None:
    path = repo.path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def config_crash(repo: Repo, result: Result, message: str) -> dict[str, Any]:
    """The whole picture of a task file that could not be read."""
    rec = check_record(repo, result)  # also: the line is in the default work/results.jsonl
    assert rec["status"] == "crash" and rec["crash_kind"] == "config"
    assert rec["task_id"] is None
    assert rec["reason"] == message
    assert rec["candidate_score"] is None and rec["baseline_score"] is None
    assert rec["changed_files"] == [] and rec["patch"] is None and rec["log_tail"] is None
    assert stderr_line(result) == f"loopengine: {message}"
    run = repo.path / "work" / "runs" / rec["run_id"]
    assert sorted(os.listdir(run)) == ["record.json"]  # no step ran
    return rec


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_bad_task_file_is_a_config_crash(repo: Repo, guarded, case: str) -> None:
    text, message = BAD_TASKS[case]
    write_raw(repo, text)
    status = repo.git("status", "--porcelain")
    config_crash(repo, guarded(), message)
    assert repo.git("status", "--porcelain") == status


def test_missing_task_file(repo: Repo, guarded) -> None:
    config_crash(repo, guarded(task="tasks/nope/task.yaml"),
                 "tasks/nope/task.yaml: no such task file")


def test_task_path_is_a_directory(repo: Repo, guarded) -> None:
    config_crash(repo, guarded(task="tasks/demo"),
                 "tasks/demo: is a directory, not a task file")


def test_task_file_outside_the_repository(repo: Repo, guarded, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(yaml.safe_dump(default_task()))
    config_crash(repo, guarded(task=str(outside)),
                 f"{outside}: the task file must be inside the repository {repo.path}")


def test_record_of_an_unreadable_task_goes_to_the_default_results(repo: Repo, guarded) -> None:
    repo.write_task(default_task(logging__results_path="work/elsewhere.jsonl",
                                 runner__timeout_secs=5))
    config_crash(repo, guarded(), f"{TASK}: runner.timeout_secs: unknown key "
                 "(did you mean timeout_seconds?)")
    assert not (repo.path / "work" / "elsewhere.jsonl").exists()


def test_task_path_is_relative_to_the_current_directory(repo: Repo, tmp_path: Path) -> None:
    repo.write_task(default_task(runner__timeout_secs=5))
    proc = subprocess.run([PY, "-m", "loopengine", "run", "--task", "task.yaml"],
                          cwd=repo.path / "tasks" / "demo", capture_output=True, text=True,
                          check=False, timeout=60)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    message = "task.yaml: runner.timeout_secs: unknown key (did you mean timeout_seconds?)"
    config_crash(repo, result, message)


# -- loopengine validate ------------------------------------------------------------------


def validate(repo: Repo, task: str = TASK) -> Result:
    return repo.run("--task", task, command="validate")


def test_validate_a_good_file(repo: Repo) -> None:
    result = validate(repo)
    assert result.code == 0
    first, *rest = result.stdout.splitlines()
    assert first == f"{TASK}: ok (task demo)"
    assert all(line.startswith("isolation: ") for line in rest)  # contract section 10
    assert result.stderr == ""
    assert not (repo.path / "work").exists()  # ran nothing, wrote nothing


@pytest.mark.parametrize("case", ["unknown key", "wrong type", "missing section", "bad YAML",
                                  "cwd with ..", "include escaping the repo"])
def test_validate_a_bad_file(repo: Repo, case: str) -> None:
    text, message = BAD_TASKS[case]
    write_raw(repo, text)
    result = validate(repo)
    assert result.code == 1
    assert result.stdout == ""
    assert stderr_line(result) == f"loopengine: {message}"
    assert not (repo.path / "work").exists()


def test_validate_a_missing_file(repo: Repo) -> None:
    result = validate(repo, "tasks/nope.yaml")
    assert result.code == 1 and result.stdout == ""
    assert stderr_line(result) == "loopengine: tasks/nope.yaml: no such task file"


# -- damaged state on disk ----------------------------------------------------------------


def test_damaged_lines_in_results_never_stop_a_run(repo: Repo, guarded) -> None:
    results = repo.path / "work" / "results.jsonl"
    results.parent.mkdir()
    damage = b'not json at all\n{"status": "keep"\n\x00\xff\xfe\n[1, 2]\n{"torn": tr'
    results.write_bytes(damage)
    rec = check_record(repo, guarded())
    assert rec["status"] == "keep"
    raw = results.read_bytes()
    assert raw.startswith(damage + b"\n")  # the torn line is ended, never merged into
    assert json.loads(raw.splitlines()[-1]) == rec
    rec2 = check_record(repo, guarded())
    assert rec2["status"] == "keep" and rec2["baseline_score"] == rec["candidate_score"]


def test_damaged_baseline_store_is_a_crash_not_a_fresh_start(repo: Repo, guarded) -> None:
    assert check_record(repo, guarded())["status"] == "keep"
    store = repo.path / "work" / "baselines" / "demo.json"
    store.write_text('{"score": "hi"')
    result = guarded()
    rec = check_record(repo, result)
    assert rec["status"] == "crash" and rec["crash_kind"] == "internal"
    assert rec["reason"].startswith("work/baselines/demo.json: damaged baseline store")
    assert stderr_line(result) == f"loopengine: {rec['reason']}"
    assert repo.read("tasks/demo/notes.md") == "first\nmore\n"


def test_results_path_onto_the_engines_state_is_a_config_crash(
        repo: Repo, guarded, isolated_env: Path) -> None:
    (repo.path / "work" / "runs").mkdir(parents=True)
    repo.write_task(default_task(logging__results_path="work/runs"))  # a folder
    repo.commit("task")
    config_crash(repo, guarded(),
                 f"{TASK}: logging.results_path: is the engine's own state (work/runs/), "
                 "got 'work/runs'")
    no_leftovers(repo, isolated_env)
