"""Issue 3, point 7: strict input.  Whatever a task file or a scorer says, the answer is a
score or one ``crash`` record naming what is wrong, never a traceback.

task.py has its own property test on ``load_task``; these two add one at the level of the
scorer's output and one end to end through the command line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from conftest import Repo, default_task
from hardening_checks import checked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopengine.score import ScoreError, parse_output
from loopengine.task import Parse

# -- the scorer's output --------------------------------------------------------------------

OUTPUTS = ['{"score": 1, "metrics": {"latency_ms": 12, "f1": 0.5}}',
           '{"metrics": {"f1": 0.75}, "score": -3.5e2}',
           '{"score": 0}']
TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "123456789012345678901234567890",
          "true", "null", '"1"', "[1]", "{}", '"score": 2, "score"', "}{", "\n", "\ufeff",
          "[" * 3000, "1e-400", "0x10", "01", "-", ".5", "'", ","]


@st.composite
def scorer_outputs(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(OUTPUTS))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        piece = draw(st.sampled_from(TOKENS) | st.text(max_size=4))
        text = text[:at] + piece + text[at + cut:]
    return text


@settings(max_examples=300, deadline=None)
@given(text=scorer_outputs(), dotted=st.sampled_from(["score", "metrics.f1"]))
def test_any_scorer_output_is_a_finite_score_or_a_score_error(text: str, dotted: str) -> None:
    try:
        value, metrics = parse_output(text, Parse("json", dotted, "metrics"))
    except ScoreError as exc:
        assert str(exc)
    else:
        assert math.isfinite(value) and isinstance(metrics, dict)


def test_deeply_nested_output_is_a_score_error() -> None:
    try:
        parse_output("[" * 100_000, Parse("json", "score", "metrics"))
    except ScoreError as exc:
        assert str(exc).startswith("the scorer's output is not one JSON object")
    else:
        raise AssertionError("no ScoreError")


# -- task files, end to end -----------------------------------------------------------------

TASK = "tasks/demo/task.yaml"


def leaves(node: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in leaves(v, (*path, k))]
    if isinstance(node, list) and node:
        return [p for i, v in enumerate(node) for p in leaves(v, (*path, i))]
    return [path]


def dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + part
    return text


def wrong_value(value: Any) -> list[Any]:
    """Values that can never pass where ``value`` is valid."""
    if isinstance(value, bool):
        return [1, "yes please", [True]]
    if isinstance(value, int | float):
        return [True, float("nan"), float("inf"), "10", [1]]
    if isinstance(value, str):
        return [12, [value], {"x": value}]
    return [{"x": 1}, 3]


@st.composite
def broken_tasks(draw: st.DrawFn) -> tuple[str, str]:
    """(task file text, what the crash reason must name)."""
    task = default_task(constraints=[{"metric": "bytes", "max": 100}])
    kind = draw(st.sampled_from(["wrong type", "duplicate key", "unsafe tag", "bad id"]))
    if kind == "bad id":
        task["id"] = draw(st.sampled_from(["bad id", "a/b", "", "..", "naïve", "x\n"]))
        return yaml.safe_dump(task, allow_unicode=True), "id:"
    if kind == "duplicate key":
        key = draw(st.sampled_from(sorted(task)))
        text = yaml.safe_dump(task)
        return text + yaml.safe_dump({key: task[key]}), f"{key}: duplicate key"
    path = draw(st.sampled_from(leaves(task)))
    if kind == "unsafe tag":
        marker = "!!python/object/apply:os.system ['touch pwned']"
        target: Any = task
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = "UNSAFE"
        return yaml.safe_dump(task).replace("UNSAFE", marker), "invalid YAML"
    target = task
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = draw(st.sampled_from(wrong_value(target[path[-1]])))
    return yaml.safe_dump(task), f"{dotted(path)}:"


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=broken_tasks())
def test_a_broken_task_file_is_one_config_crash_naming_the_field(
        repo: Repo, case: tuple[str, str]) -> None:
    text, names = case
    repo.write(TASK, text)
    result = repo.run()
    rec = checked(repo, result)
    assert rec["status"] == "crash" and rec["crash_kind"] == "config", rec
    assert rec["reason"].startswith(f"{TASK}: ") and names in rec["reason"], (names, rec)
    assert result.stderr.count("\n") == 1
    assert not (repo.path / "tasks" / "demo" / "pwned").exists()
    assert not Path(repo.path / "pwned").exists()
