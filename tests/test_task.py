from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import math
import operator
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from loopengine.errors import LoopError, TaskError
from loopengine.schema import TaskFile
from loopengine.task import (
    Constraint,
    Parse,
    Policy,
    Step,
    Task,
    json_schema,
    load_task,
    match_artifact,
)

TASK = "tasks/x/task.yaml"
SECTIONS = [
    "id",
    "description",
    "artifacts",
    "mutation",
    "mutator",
    "runner",
    "scorer",
    "objective",
    "constraints",
    "policy",
    "budget",
    "logging",
]

VALID: dict[str, Any] = {
    "id": "skill-quality",
    "description": "Improve the sample SKILL.md",
    "artifacts": {"include": ["fixtures/SKILL.md"], "max_files_per_iteration": 2},
    "mutation": {"max_changed_lines": 30, "allowed_file_types": [".md", ".tar.gz"]},
    "mutator": {
        "type": "command",
        "command": "python mutate.py",
        "cwd": "tasks/x",
        "timeout_seconds": 30,
    },
    "runner": {"command": "python run.py", "cwd": "./tasks/x/", "timeout_seconds": 2.5},
    "scorer": {
        "type": "command",
        "command": "python score.py",
        "cwd": ".",
        "timeout_seconds": 30,
        "parse": {"format": "json", "score_field": "metrics.f1", "metrics_field": None},
    },
    "objective": {"direction": "minimize"},
    "constraints": [{"metric": "latency_ms", "max": 50}, {"metric": "f1", "min": 0.5, "max": 1}],
    "policy": {
        "min_improvement": 0.5,
        "keep_when_no_baseline": False,
        "commit_on_keep": False,
        "repeats": 3,
        "remeasure_baseline": True,
        "confidence": 0.9,
        "fingerprint": ["scripts/*.py"],
    },
    "budget": {"max_seconds": 600},
    "logging": {"results_path": "work/r.jsonl"},
    "sandbox": {"reuse": True},
}

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
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tasks" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(repo: Path, document: object, name: str = TASK) -> str:
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text, encoding="utf-8")
    return name


def load(repo: Path, document: object, name: str = TASK) -> Task:
    return load_task(write(repo, document, name), repo)


def error(repo: Path, document: object, name: str = TASK) -> str:
    with pytest.raises(TaskError) as info:
        load(repo, document, name)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    return message


def changed(dotted: str, value: object, base: dict[str, Any] = VALID) -> dict[str, Any]:
    """A copy of ``base`` with the dotted key set (or removed, for value ``...``)."""
    document = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node = document
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return document


# --- loading valid tasks ---------------------------------------------------------------


def test_full_task_loads_into_a_frozen_record(repo: Path) -> None:
    task = load(repo, VALID)
    assert task.path == repo.resolve() / TASK
    assert task.display_path == TASK
    assert task.repo_root == repo.resolve()
    assert task.task_dir == "tasks/x"
    assert (task.id, task.description) == ("skill-quality", "Improve the sample SKILL.md")
    assert task.include == ("tasks/x/fixtures/SKILL.md",)
    assert task.max_files_per_iteration == 2
    assert task.max_changed_lines == 30
    assert task.allowed_file_types == (".md", ".tar.gz")
    assert task.mutator == Step("python mutate.py", "tasks/x", 30.0)
    assert task.runner == Step("python run.py", "tasks/x", 2.5)
    assert task.scorer == Step("python score.py", ".", 30.0)
    assert task.parse == Parse("json", "metrics.f1", None)
    assert task.direction == "minimize"
    assert task.constraints == (
        Constraint("latency_ms", None, 50.0),
        Constraint("f1", 0.5, 1.0),
    )
    assert task.policy == Policy(0.5, False, False, 3, True, 0.9, ("scripts/*.py",))
    assert (task.max_seconds, task.results_path, task.sandbox_reuse) == (
        600.0,
        "work/r.jsonl",
        True,
    )
    assert isinstance(task.runner.timeout_seconds, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.id = "other"  # type: ignore[misc]
    assert hash(task) == hash(load(repo, VALID))


def test_minimal_task_gets_every_default(repo: Path) -> None:
    task = load(repo, MINIMAL)
    assert task.include == ("tasks/x/a.md",)
    assert (task.max_files_per_iteration, task.max_changed_lines) == (1, 40)
    assert task.allowed_file_types == ()
    assert task.mutator == Step("m", ".", 600.0)
    assert task.parse == Parse("json", "score", "metrics")
    assert task.direction == "maximize"
    assert task.constraints == ()
    assert task.policy == Policy(0.0, True, True, 1, False, 0.95, ())
    assert (task.max_seconds, task.results_path, task.sandbox_reuse) == (
        3600.0,
        "work/results.jsonl",
        False,
    )


def test_data_is_the_document_with_defaults_filled_in(repo: Path) -> None:
    step = {"type": "command", "cwd": ".", "timeout_seconds": 600, "isolation": {}}
    assert load(repo, MINIMAL).data == {
        "id": "t",
        "description": "",
        "artifacts": {"include": ["tasks/x/a.md"], "max_files_per_iteration": 1},
        "mutation": {"max_changed_lines": 40, "allowed_file_types": []},
        "mutator": {**step, "command": "m"},
        "runner": {**step, "command": "r"},
        "scorer": {
            **step,
            "command": "s",
            "parse": {"format": "json", "score_field": "score", "metrics_field": "metrics"},
        },
        "objective": {"direction": "maximize"},
        "constraints": [],
        "policy": {
            "min_improvement": 0.0,
            "keep_when_no_baseline": True,
            "commit_on_keep": True,
            "repeats": 1,
            "remeasure_baseline": False,
            "confidence": 0.95,
            "fingerprint": [],
            "effect": None,
        },
        "budget": {"max_seconds": 3600},
        "logging": {"results_path": "work/results.jsonl"},
        "sandbox": {"reuse": False},
        "isolation": {"mode": "auto", "network": False, "read": [], "write": [], "hide": [],
                      "env": []},
        "executor": {"kind": "local", "address": "auto",
                     "resources": {"num_cpus": 1, "num_gpus": 0}},
    }
    data = load(repo, VALID).data
    assert json.loads(json.dumps(data)) == data
    assert data["constraints"][0] == {"metric": "latency_ms", "max": 50}


def test_the_contracts_example_loads(repo: Path) -> None:
    text = """\
id: skill-quality                    # [A-Za-z0-9._-]+
description: Improve the sample SKILL.md
artifacts:
  include: [fixtures/SKILL.md]       # task-relative paths or glob patterns
  max_files_per_iteration: 1         # int >= 1
mutation:
  max_changed_lines: 40              # int >= 1; insertions + deletions, as git counts them
  allowed_file_types: [".md"]        # file suffixes that a change may touch
mutator:
  type: command                      # the only type
  command: "python ../../scripts/mutate_skill_task.py --task-dir . --artifact fixtures/SKILL.md"
  cwd: tasks/skill-quality           # repo-relative; default "."
  timeout_seconds: 30                # default 600
runner:
  command: "python ../../scripts/evaluate_skill_task.py --task-dir . --output ../../work/r.json"
  cwd: tasks/skill-quality
  timeout_seconds: 30
scorer:
  type: command
  command: "python scripts/score_skill_task.py --input work/skill-run.json"
  cwd: "."                           # default "."
  timeout_seconds: 30
  parse:
    format: json                     # the scorer's stdout is one JSON object
    score_field: score               # dotted path allowed: "metrics.f1"
    metrics_field: metrics           # optional
objective:
  direction: maximize                # maximize | minimize
constraints:                         # each bound is checked on the scorer's metrics
  - {metric: latency_ms, max: 50}
policy:
  min_improvement: 0.0               # a keep must beat the baseline by more than this
  keep_when_no_baseline: true
  commit_on_keep: true
budget:
  max_seconds: 600                   # wall-clock cap on the whole iteration
logging:
  results_path: work/results.jsonl   # repo-relative
"""
    task = load(repo, text, "tasks/skill-quality/task.yaml")
    assert task.include == ("tasks/skill-quality/fixtures/SKILL.md",)
    assert task.mutator.cwd == "tasks/skill-quality"
    assert task.constraints == (Constraint("latency_ms", None, 50.0),)


def test_anchors_and_merge_keys_work(repo: Path) -> None:
    text = yaml.safe_dump(changed("runner", ..., MINIMAL), sort_keys=False)
    text = text.replace("mutator:\n", "mutator: &step\n") + "runner:\n  <<: *step\n  command: r2\n"
    task = load(repo, text)
    assert task.runner == Step("r2", ".", 600.0)


def test_path_as_typed_and_task_dir(repo: Path) -> None:
    write(repo, MINIMAL, "task.yaml")
    at_root = load_task(Path("task.yaml"), Path("."))
    assert (at_root.task_dir, at_root.display_path) == (".", "task.yaml")
    assert at_root.include == ("a.md",)
    assert at_root.repo_root == repo.resolve()
    absolute = str(repo / TASK)
    write(repo, changed("id", "a b", MINIMAL))
    with pytest.raises(TaskError, match=f"^{re.escape(absolute)}: id: "):
        load_task(absolute, repo)
    with pytest.raises(TaskError, match=r"^\./tasks/x/task\.yaml: id: "):
        load_task("./tasks/x/task.yaml", repo)


def test_task_error_is_a_loop_error_with_crash_kind_config(repo: Path) -> None:
    with pytest.raises(LoopError) as info:
        load(repo, changed("id", "a b"))
    assert info.value.crash_kind == "config"


# --- field errors ----------------------------------------------------------------------

SUFFIX = "must be a file suffix starting with '.', like '.md'"
# (dotted key, value, problem); a problem starting with "[" or "." names a field below the key.
FIELD_ERRORS = [
    ("id", "a b", "must match [A-Za-z0-9._-]+, got 'a b'"),
    ("id", "", "must match [A-Za-z0-9._-]+, got ''"),
    ("id", ".", "must not be '.' or '..'"),
    ("id", "..", "must not be '.' or '..'"),
    ("id", 5, "expected a string, got integer"),
    ("description", None, "expected a string, got null"),
    ("artifacts", [], "expected a mapping, got list"),
    ("artifacts.include", [], "must not be empty"),
    ("artifacts.include", "a.md", "expected a list, got string"),
    ("artifacts.include", [" "], "[0]: must not be empty"),
    ("artifacts.include", ["a.md", 3], "[1]: expected a string, got integer"),
    ("artifacts.max_files_per_iteration", 0, "must be >= 1, got 0"),
    ("artifacts.max_files_per_iteration", 1.5, "expected an integer, got 1.5"),
    ("artifacts.max_files_per_iteration", 2.0, "expected an integer, got 2.0"),
    ("artifacts.max_files_per_iteration", True, "expected an integer, got bool"),
    ("mutation.max_changed_lines", 0, "must be >= 1, got 0"),
    ("mutation.max_changed_lines", "40", "expected an integer, got string"),
    ("mutation.allowed_file_types", ".md", "expected a list, got string"),
    ("mutation.allowed_file_types", ["md"], f"[0]: {SUFFIX}, got 'md'"),
    ("mutation.allowed_file_types", ["."], f"[0]: {SUFFIX}, got '.'"),
    ("mutator.type", "python", "expected one of command, got 'python'"),
    ("mutator.command", "", "must not be empty"),
    ("mutator.command", " \t", "must not be empty"),
    ("mutator.command", ["python", "m.py"], "expected a string, got list"),
    ("mutator.cwd", "/abs", "must be relative to the repository root, got '/abs'"),
    ("mutator.cwd", "..", "must not contain '..'"),
    ("runner.cwd", "tasks/../x", "must not contain '..'"),
    ("scorer.cwd", 1, "expected a string, got integer"),
    ("runner.type", "shell", "expected one of command, got 'shell'"),
    ("runner.timeout_seconds", "10", "expected a number, got string"),
    ("runner.timeout_seconds", True, "expected a number, got bool"),
    ("runner.timeout_seconds", None, "expected a number, got null"),
    ("runner.timeout_seconds", 0, "must be > 0, got 0"),
    ("runner.timeout_seconds", -1.5, "must be > 0, got -1.5"),
    ("runner.timeout_seconds", math.inf, "must be a finite number, got inf"),
    ("runner.timeout_seconds", math.nan, "must be a finite number, got nan"),
    ("runner.timeout_seconds", 10**400, "is too large"),
    ("scorer.parse", "json", "expected a mapping, got string"),
    ("scorer.parse", {"format": "yaml"}, ".format: expected one of json, got 'yaml'"),
    ("scorer.parse", {"score_field": ""}, ".score_field: must not be empty"),
    ("scorer.parse", {"metrics_field": 3}, ".metrics_field: expected a string, got integer"),
    ("objective.direction", "max", "expected one of maximize, minimize, got 'max'"),
    ("objective.direction", None, "expected one of maximize, minimize, got null"),
    ("objective.direction", ["maximize"], "expected one of maximize, minimize, got list"),
    ("constraints", {}, "expected a list, got mapping"),
    ("constraints", ["x"], "[0]: expected a mapping, got string"),
    ("constraints", [{"metric": "x"}], "[0]: needs min or max (or both)"),
    ("constraints", [{"metric": "x", "min": 5, "max": 1}], "[0].max: must be >= min (5), got 1"),
    ("constraints", [{"metric": "x", "max": "1"}], "[0].max: expected a number, got string"),
    ("constraints", [{"metric": "x", "min": None}], "[0].min: expected a number, got null"),
    ("constraints", [{"max": 1}], "[0].metric: missing required key"),
    ("constraints", [{"metric": "", "max": 1}], "[0].metric: must not be empty"),
    ("policy.min_improvement", -0.1, "must be >= 0, got -0.1"),
    ("policy.keep_when_no_baseline", "yes", "expected a bool, got string"),
    ("policy.commit_on_keep", 1, "expected a bool, got integer"),
    ("policy.repeats", 0, "must be >= 1, got 0"),
    ("policy.repeats", 2.5, "expected an integer, got 2.5"),
    ("policy.remeasure_baseline", None, "expected a bool, got null"),
    ("policy.confidence", 0.4, "must be >= 0.5, got 0.4"),
    ("policy.confidence", 1, "must be < 1, got 1"),
    ("policy.confidence", 1.0, "must be < 1, got 1.0"),
    ("policy.fingerprint", "*.py", "expected a list, got string"),
    ("policy.fingerprint", [1], "[0]: expected a string, got integer"),
    ("budget.max_seconds", 0, "must be > 0, got 0"),
    ("budget.max_seconds", "1h", "expected a number, got string"),
    ("logging.results_path", "/r.jsonl", "must be relative to the repository root, got '/r.jsonl'"),
    ("logging.results_path", "../r.jsonl", "must not contain '..'"),
    ("logging.results_path", "./", "must name a file, got './'"),
    ("sandbox", None, "expected a mapping, got null"),
    ("sandbox.reuse", "no", "expected a bool, got string"),
]  # fmt: skip


@pytest.mark.parametrize(("dotted", "value", "problem"), FIELD_ERRORS)
def test_field_error(repo: Path, dotted: str, value: object, problem: str) -> None:
    below = problem.startswith(("[", "."))
    expected = f"{TASK}: {dotted}{problem}" if below else f"{TASK}: {dotted}: {problem}"
    assert error(repo, changed(dotted, value)) == expected


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("runner.timeout_secs", 1,
         "runner.timeout_secs: unknown key (did you mean timeout_seconds?)"),
        ("scorer", ..., "scorer: missing required section"),
        ("runner.command", ..., "runner.command: missing required key"),
        ("runner.timeout_seconds", "1", "runner.timeout_seconds: expected a number, got string"),
        ("objective.direction", "max",
         "objective.direction: expected one of maximize, minimize, got 'max'"),
        ("id", "a b", "id: must match [A-Za-z0-9._-]+, got 'a b'"),
        ("mutator.cwd", "/abs", "mutator.cwd: must be relative to the repository root, got '/abs'"),
    ],
)  # fmt: skip
def test_the_messages_in_the_brief(repo: Path, dotted: str, value: object, message: str) -> None:
    assert error(repo, changed(dotted, value)) == f"tasks/x/task.yaml: {message}"


def test_long_values_are_shortened_in_messages(repo: Path) -> None:
    message = error(repo, changed("objective.direction", "x" * 500))
    assert message.endswith("got '" + "x" * 55 + "...'")
    assert len(message.split("got ")[1]) == 60


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_is_required(repo: Path, section: str) -> None:
    assert (
        error(repo, changed(section, ..., MINIMAL))
        == f"{TASK}: {section}: missing required section"
    )


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        ("runner.command", "runner.command: missing required key"),
        ("artifacts.include", "artifacts.include: missing required key"),
    ],
)
def test_missing_required_key(repo: Path, dotted: str, message: str) -> None:
    assert error(repo, changed(dotted, ..., MINIMAL)) == f"{TASK}: {message}"


def test_sandbox_section_is_optional(repo: Path) -> None:
    assert load(repo, changed("sandbox", ...)).sandbox_reuse is False


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        ("runner.timeout_secs", "runner.timeout_secs: unknown key (did you mean timeout_seconds?)"),
        ("scorr", "scorr: unknown key (did you mean scorer?)"),
        ("name", "name: unknown key"),
        ("scorer.parse.score_feild",
         "scorer.parse.score_feild: unknown key (did you mean score_field?)"),
        ("policy.repeat", "policy.repeat: unknown key (did you mean repeats?)"),
        ("sandbox.reuses", "sandbox.reuses: unknown key (did you mean reuse?)"),
        ("artifacts.exclude", "artifacts.exclude: unknown key (did you mean include?)"),
    ],
)  # fmt: skip
def test_unknown_keys_with_a_hint(repo: Path, dotted: str, message: str) -> None:
    assert error(repo, changed(dotted, 1)) == f"{TASK}: {message}"


def test_unknown_key_in_a_list_item(repo: Path) -> None:
    document = changed("constraints", [{"metric": "x", "maximum": 3}])
    assert (
        error(repo, document) == f"{TASK}: constraints[0].maximum: unknown key (did you mean max?)"
    )


def test_odd_keys_are_named_readably(repo: Path) -> None:
    assert error(repo, {**VALID, "": 1}) == f"{TASK}: '': unknown key"
    assert error(repo, {**VALID, "a\nb": 1}) == f"{TASK}: 'a\\nb': unknown key"
    assert error(repo, changed("runner.time out", 1)) == (
        f"{TASK}: runner.'time out': unknown key (did you mean timeout_seconds?)"
    )
    assert error(repo, "id: t\n3: x\n") == f"{TASK}: 3: unknown key"


def test_a_typo_is_reported_before_the_missing_key_it_explains(repo: Path) -> None:
    document = changed("runner.command", ...)
    document["runner"]["comand"] = "r"
    assert error(repo, document) == f"{TASK}: runner.comand: unknown key (did you mean command?)"


def test_first_error_in_schema_order_wins(repo: Path) -> None:
    document = changed("budget.max_seconds", -1, changed("mutation.max_changed_lines", 0))
    document = {key: document[key] for key in reversed(document)}
    assert error(repo, document) == f"{TASK}: mutation.max_changed_lines: must be >= 1, got 0"


# --- path rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cwd", "normalized"),
    [(".", "."), ("", "."), ("./", "."), ("./tasks/x/", "tasks/x"), ("a//b/.", "a/b")],
)
def test_cwd_is_normalized(repo: Path, cwd: str, normalized: str) -> None:
    assert load(repo, changed("scorer.cwd", cwd)).scorer.cwd == normalized


def test_results_path_is_normalized(repo: Path) -> None:
    assert (
        load(repo, changed("logging.results_path", "./work//r.jsonl")).results_path
        == "work/r.jsonl"
    )


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ("fixtures/SKILL.md", "tasks/x/fixtures/SKILL.md"),
        ("./fixtures//*.md", "tasks/x/fixtures/*.md"),
        ("../shared/**", "tasks/shared/**"),
        ("../../README.md", "README.md"),
        ("../../src/[ab]?.py", "src/[ab]?.py"),
    ],
)
def test_include_entries_become_repo_relative_patterns(
    repo: Path, entry: str, pattern: str
) -> None:
    assert load(repo, changed("artifacts.include", [entry])).include == (pattern,)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("/etc/passwd", "must be relative to the task directory, got '/etc/passwd'"),
        ("../../../x", "resolves outside the repository, got '../../../x'"),
        ("../../..", "resolves outside the repository, got '../../..'"),
        ("../../.git/config", "must not point into .git/, got '../../.git/config'"),
        ("../../work/x", "must not point into work/, got '../../work/x'"),
        ("../../.venv/lib/**", "must not point into .venv/, got '../../.venv/lib/**'"),
        ("../../.pytest_cache", "must not point into .pytest_cache/, got '../../.pytest_cache'"),
    ],
)
def test_include_rules(repo: Path, entry: str, problem: str) -> None:
    document = changed("artifacts.include", ["ok.md", entry])
    assert error(repo, document) == f"{TASK}: artifacts.include[1]: {problem}"


@pytest.mark.parametrize("entry", ["../x", ".git/config", "work/x", "./work"])
def test_include_rules_for_a_task_at_the_root(repo: Path, entry: str) -> None:
    message = error(repo, changed("artifacts.include", [entry]), "task.yaml")
    assert message.startswith("task.yaml: artifacts.include[0]: ")


def test_a_folder_merely_named_work_deeper_down_is_fine(repo: Path) -> None:
    assert load(repo, changed("artifacts.include", ["work/x.md"])).include == ("tasks/x/work/x.md",)


# --- the file itself -------------------------------------------------------------------


def test_missing_file(repo: Path) -> None:
    with pytest.raises(TaskError, match=r"^tasks/nope\.yaml: no such task file$"):
        load_task("tasks/nope.yaml", repo)
    write(repo, MINIMAL)
    with pytest.raises(TaskError, match=r"^tasks/x/task\.yaml/y: no such task file$"):
        load_task("tasks/x/task.yaml/y", repo)


def test_directory(repo: Path) -> None:
    with pytest.raises(TaskError, match=r"^tasks/x: is a directory, not a task file$"):
        load_task("tasks/x", repo)


def test_fifo_is_not_read(repo: Path) -> None:
    os.mkfifo(repo / "fifo.yaml")
    with pytest.raises(TaskError, match=r"^fifo\.yaml: is not a regular file$"):
        load_task("fifo.yaml", repo)


def test_unreadable_file(repo: Path) -> None:
    (repo / "loop.yaml").symlink_to("loop.yaml")
    with pytest.raises(TaskError, match=r"^loop\.yaml: cannot read the task file: Too many levels"):
        load_task("loop.yaml", repo)


def test_task_file_outside_the_repository(repo: Path) -> None:
    write(repo, MINIMAL)
    other = repo / "tasks" / "y" / ".." / "other"
    with pytest.raises(TaskError) as info:
        load_task(TASK, other)
    root = (repo / "tasks" / "other").resolve()
    assert str(info.value) == f"{TASK}: the task file must be inside the repository {root}"


def test_not_utf8(repo: Path) -> None:
    (repo / TASK).write_bytes(b"id: caf\xe9\n")
    with pytest.raises(
        TaskError, match=r"^tasks/x/task\.yaml: the task file is not UTF-8 \(byte 7\)$"
    ):
        load_task(TASK, repo)


def test_utf8_bom_is_fine(repo: Path) -> None:
    (repo / TASK).write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(MINIMAL).encode())
    assert load_task(TASK, repo).id == "t"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the task file is empty"),
        ("# only a comment\n", "the task file is empty"),
        ("- a\n- b\n", "the task file must be a mapping, got list"),
        ("hello\n", "the task file must be a mapping, got string"),
        ("a: b: c\n", "invalid YAML: mapping values are not allowed here (line 1, column 5)"),
        (
            "id: t\nlist: [1\n",
            "invalid YAML: while parsing a flow sequence, expected ',' or ']', "
            "but got '<stream end>' (line 3, column 1)",
        ),
        (
            "id: a\n---\nid: b\n",
            "invalid YAML: expected a single document in the stream, "
            "but found another document (line 2, column 1)",
        ),
        ("id: *nope\n", "invalid YAML: found undefined alias 'nope' (line 1, column 5)"),
        ("id: \x00\n",
         "invalid YAML: special characters are not allowed: character #x0000 at position 4"),
        ("id: 2024-13-45\n", "invalid YAML: month must be in 1..12"),
        ("id: 0x_\n", "invalid YAML: invalid literal for int() with base 16: ''"),
    ],
)  # fmt: skip
def test_bad_documents(repo: Path, text: str, problem: str) -> None:
    assert error(repo, text) == f"{TASK}: {problem}"


def test_huge_integer_literal_is_invalid_yaml(repo: Path) -> None:
    assert error(repo, "id: " + "1" * 5000 + "\n").startswith(
        f"{TASK}: invalid YAML: Exceeds the limit"
    )


def test_deep_nesting_is_invalid_yaml(repo: Path) -> None:
    assert (
        error(repo, "id: " + "[" * 600 + "]" * 600 + "\n")
        == f"{TASK}: invalid YAML: nested too deeply"
    )


@pytest.mark.parametrize(
    "value",
    [
        "!!python/object/apply:os.system ['touch pwned']",
        "!!python/name:os.system",
        "!!python/object:builtins.dict {}",
    ],
)
def test_unsafe_tags_are_rejected(repo: Path, value: str) -> None:
    message = error(repo, f"id: t\ndescription: {value}\n")
    assert message.startswith(
        f"{TASK}: invalid YAML: could not determine a constructor for the tag"
    )
    assert message.endswith("(line 2, column 14)")
    assert not (repo / "pwned").exists()


def test_a_safe_tag_of_the_wrong_type_is_a_type_error(repo: Path) -> None:
    text = yaml.safe_dump(changed("description", ..., MINIMAL)) + "description: !!binary aGk=\n"
    assert error(repo, text) == f"{TASK}: description: expected a string, got bytes"
    text = yaml.safe_dump(changed("description", ..., MINIMAL)) + "description: 2024-01-01\n"
    assert error(repo, text) == f"{TASK}: description: expected a string, got date"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("id: a\nid: b\n", "id"),
        ("runner:\n  command: a\n  cwd: .\n  command: b\n", "runner.command"),
        (
            "constraints:\n  - {metric: a, max: 1}\n  - {metric: b, max: 1, max: 2}\n",
            "constraints[1].max",
        ),
        ("runner: {1: a, 1.0: b}\n", "runner.1.0"),
        ("id: a\n'id': b\n", "id"),
    ],
)
def test_duplicate_keys(repo: Path, text: str, path: str) -> None:
    assert error(repo, text) == f"{TASK}: {path}: duplicate key"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "tasks" / "x").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def base(scratch: Path) -> Task:
    write(scratch, MINIMAL, "base.yaml")
    return load_task(scratch / "base.yaml", scratch)


# --- artifact globs --------------------------------------------------------------------

GLOBS = [
    ("a/b.md", "a/b.md", True),
    ("a/b.md", "a/b.mdx", False),
    ("a/b.md", "x/a/b.md", False),
    ("a/*.md", "a/b.md", True),
    ("a/*.md", "a/.md", True),
    ("a/*.md", "a/x/b.md", False),
    ("a/?.md", "a/b.md", True),
    ("a/?.md", "a/bc.md", False),
    ("a/**/b.md", "a/b.md", True),
    ("a/**/b.md", "a/x/y/b.md", True),
    ("a/**/b.md", "ab.md", False),
    ("a/**", "a/x/y", True),
    ("a/**", "a", False),
    ("**", "anything/at/all.txt", True),
    ("**/*.py", "x.py", True),
    ("**/*.py", "a/b/x.py", True),
    ("a/[bc].md", "a/c.md", True),
    ("a/[!bc].md", "a/c.md", False),
    ("a/[!bc].md", "a/d.md", True),
    ("a/[a-c].md", "a/b.md", True),
    ("a/[z-a].md", "a/b.md", False),
    ("a/[.md", "a/[.md", True),
    ("a/(b)+.md", "a/(b)+.md", True),
    ("a/(b)+.md", "a/bb.md", False),
    ("a/*b*", "a/x/b", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOBS)
def test_match_artifact(base: Task, pattern: str, path: str, expected: bool) -> None:
    task = dataclasses.replace(base, include=(pattern,))
    assert match_artifact(task, path) is expected


def test_match_artifact_uses_every_pattern_and_never_reserved_folders(repo: Path) -> None:
    task = dataclasses.replace(load(repo, MINIMAL), include=("a.md", "**"))
    assert match_artifact(task, "a.md")
    assert match_artifact(task, "src/x.py")
    for path in [".git/config", "work/results.jsonl", ".venv/x", ".pytest_cache/x", "../x", "/x"]:
        assert not match_artifact(task, path)
    loaded = load(repo, changed("artifacts.include", ["fixtures/*.md"]))
    assert match_artifact(loaded, "tasks/x/fixtures/SKILL.md")
    assert not match_artifact(loaded, "fixtures/SKILL.md")


def reference_match(pattern: str, path: str) -> bool:
    """Component by component with fnmatch; ``**`` is zero or more components (one at the end)."""

    def walk(parts: list[str], names: list[str]) -> bool:
        if not parts:
            return not names
        head, rest = parts[0], parts[1:]
        if head == "**":
            start = 1 if not rest else 0
            return any(walk(rest, names[i:]) for i in range(start, len(names) + 1))
        return bool(names) and fnmatch.fnmatchcase(names[0], head) and walk(rest, names[1:])

    return walk(pattern.split("/"), path.split("/"))


@settings(max_examples=150, deadline=None)
@given(
    pattern=st.text("ab.*?[]!-/", min_size=1, max_size=10),
    path=st.text("ab.-/", min_size=1, max_size=8).filter(
        lambda p: not p.startswith("/") and ".." not in p.split("/")
    ),
)
def test_globs_agree_with_fnmatch_per_component(base: Task, pattern: str, path: str) -> None:
    task = dataclasses.replace(base, include=(pattern,))
    assert match_artifact(task, path) is reference_match(pattern, path)


@settings(max_examples=100, deadline=None)
@given(pattern=st.text(max_size=12), path=st.text(max_size=12))
def test_any_pattern_compiles(base: Task, pattern: str, path: str) -> None:
    assert match_artifact(dataclasses.replace(base, include=(pattern,)), path) in (True, False)


# --- JSON Schema -----------------------------------------------------------------------

KEYWORDS = {
    "$schema", "title", "description", "default", "type", "properties", "required",
    "additionalProperties", "items", "minItems", "minLength", "pattern", "enum", "not",
    "anyOf", "minimum", "exclusiveMinimum", "exclusiveMaximum",
}  # fmt: skip
TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


def subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield schema
    children = list(schema.get("properties", {}).values()) + schema.get("anyOf", [])
    children += [schema[key] for key in ("items", "not") if key in schema]
    for child in children:
        yield from subschemas(child)


def ecma(pattern: str) -> str:
    return pattern.replace("$", r"\Z")  # ECMA-262's $ never matches before a final newline


def conforms(schema: dict[str, Any], value: object) -> bool:
    """Enough of draft 2020-12 for the keywords that json_schema() uses."""
    kind = schema.get("type")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    types = {
        None: True,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "number": number,
        "integer": number and float(value).is_integer() if number else False,  # type: ignore[arg-type]
    }
    if not types[kind]:
        return False
    if "enum" in schema and not any(type(value) is type(v) and value == v for v in schema["enum"]):
        return False
    if "anyOf" in schema and not any(conforms(s, value) for s in schema["anyOf"]):
        return False
    if "not" in schema and conforms(schema["not"], value):
        return False
    if isinstance(value, int | float):
        bounds = [("minimum", operator.ge), ("exclusiveMinimum", operator.gt)]
        bounds.append(("exclusiveMaximum", operator.lt))
        if any(key in schema and not holds(value, schema[key]) for key, holds in bounds):
            return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return False
        if "pattern" in schema and not re.search(ecma(schema["pattern"]), value):
            return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return False
        if "items" in schema and not all(conforms(schema["items"], v) for v in value):
            return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(key not in value for key in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(properties):
            return False
        if not all(conforms(properties[k], v) for k, v in value.items() if k in properties):
            return False
    return True


def test_json_schema_is_a_draft_2020_12_document() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json.loads(json.dumps(schema)) == schema
    for node in subschemas(schema):
        assert set(node) <= KEYWORDS, set(node) - KEYWORDS
        assert node.get("type", "object") in TYPES
        if "properties" in node:
            assert set(node.get("required", [])) <= set(node["properties"])
        if "pattern" in node:
            re.compile(node["pattern"])
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
        for name, child in node.get("properties", {}).items():
            assert child["description"], name
            if "default" in child:
                assert conforms(child, child["default"]), name


def test_json_schema_follows_the_declaration() -> None:
    schema = json_schema()
    assert list(schema["properties"]) == [*SECTIONS, "sandbox", "isolation", "executor"]
    assert list(schema["properties"]) == list(TaskFile.model_fields)
    assert schema["required"] == SECTIONS
    runner = schema["properties"]["runner"]
    assert runner["required"] == ["command"]
    assert runner["properties"]["timeout_seconds"] == {
        "description": runner["properties"]["timeout_seconds"]["description"],
        "type": "number",
        "exclusiveMinimum": 0,
        "default": 600,
    }
    parse = schema["properties"]["scorer"]["properties"]["parse"]
    assert parse["default"] == {
        "format": "json",
        "score_field": "score",
        "metrics_field": "metrics",
    }
    confidence = schema["properties"]["policy"]["properties"]["confidence"]
    assert (confidence["minimum"], confidence["exclusiveMaximum"], confidence["default"]) == (
        0.5,
        1,
        0.95,
    )
    assert schema["properties"]["objective"]["properties"]["direction"]["enum"] == [
        "maximize",
        "minimize",
    ]
    assert schema["properties"]["id"]["pattern"] == "^(?:[A-Za-z0-9._-]+)$"


def test_json_schema_agrees_with_the_loader_on_examples(repo: Path) -> None:
    schema = json_schema()
    assert conforms(schema, VALID)
    assert conforms(schema, MINIMAL)
    for dotted, value, _ in FIELD_ERRORS:
        if dotted in {"constraints", "logging.results_path"} or value in ("..", "./"):
            continue  # cross-field rules and normalization the schema cannot say
        if isinstance(value, float) and (not math.isfinite(value) or value == 2.0):
            continue  # JSON has no infinity, and 2.0 is an integer to JSON Schema
        if value == 10**400:
            continue  # JSON numbers are unbounded
        assert not conforms(schema, changed(dotted, value)), (dotted, value)
    for section in SECTIONS:
        assert not conforms(schema, changed(section, ..., MINIMAL))
    assert not conforms(schema, changed("runner.timeout_secs", 1))


# --- whatever the document, a Task or a TaskError --------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)
KEYS = st.sampled_from(["command", "cwd", "max", "min", "reuse", "timeout_secs"]) | st.text(
    max_size=6
)
YAML_CHARACTERS = "ab1.:- \n\t[]{}!&*?'\"#%|>@~,"


def slots(node: dict[str, Any] | list[Any]) -> Iterator[tuple[Any, Any]]:
    pairs = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
    for key, value in pairs:
        yield node, key
        if isinstance(value, dict | list):
            yield from slots(value)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = copy.deepcopy(draw(st.sampled_from([VALID, MINIMAL])))
    for _ in range(draw(st.integers(1, 3))):
        found = list(slots(document))
        operation = draw(st.sampled_from(["drop", "replace", "add"]))
        if operation == "add":
            mappings = [document] + [c[k] for c, k in found if isinstance(c[k], dict)]
            draw(st.sampled_from(mappings))[draw(KEYS)] = draw(JSONISH)
        elif found:
            container, key = draw(st.sampled_from(found))
            if operation == "drop":
                del container[key]
            else:
                container[key] = draw(JSONISH)
    return document


@settings(max_examples=100, deadline=None)
@given(document=mutated_documents())
def test_any_mutated_document_gives_a_task_or_a_task_error(
    scratch: Path, document: dict[str, Any]
) -> None:
    path = scratch / TASK
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    try:
        task = load_task(str(path), scratch)
    except TaskError as e:
        assert str(e).startswith(f"{path}: ")
        assert len(str(e).splitlines()) == 1
    else:
        assert isinstance(task, Task)
        assert conforms(json_schema(), document)  # the schema is never stricter than the loader
        json.dumps(task.data, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80) | st.text(YAML_CHARACTERS, max_size=40))
def test_any_text_gives_a_task_or_a_task_error(scratch: Path, text: str) -> None:
    path = scratch / TASK
    path.write_text(text, encoding="utf-8")
    try:
        load_task(path, scratch)
    except TaskError as e:
        assert str(e).startswith(f"{path}: ")
        assert len(str(e).splitlines()) == 1
