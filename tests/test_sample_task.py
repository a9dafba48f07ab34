"""The sample task (tasks/skill-quality): its wiring, its scripts, and the climb it promises.

The scripts run as real subprocesses with the task file's own commands, in a copy of the
layout the engine's sandbox has (scripts/, tasks/skill-quality/, an empty work/).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "tasks" / "skill-quality"
ARTIFACT = "tasks/skill-quality/fixtures/SKILL.md"
# The fixture as shipped.  Not the working copy: `loopengine run --task
# tasks/skill-quality/task.yaml` (the README's first command) keeps and commits an improved
# SKILL.md in this very repository, and the tests must pass after it, any number of times.
PRISTINE = Path(__file__).resolve().parent / "data" / "skill-quality-SKILL.md"
SCRIPTS = (
    "skill_rubric.py",
    "mutate_skill_task.py",
    "evaluate_skill_task.py",
    "score_skill_task.py",
)
TASK = yaml.safe_load((TASK_DIR / "task.yaml").read_text(encoding="utf-8"))
ENV = {
    **{key: value for key, value in os.environ.items() if not key.startswith("GIT_")},
    "PYTHONDONTWRITEBYTECODE": "1",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}

# The scripts are also imported, for the property test; importing the mutator turns off
# bytecode writing (so it adds nothing to a sandbox), which this process should not keep.
_write_bytecode = sys.dont_write_bytecode
sys.path.insert(0, str(REPO / "scripts"))
import mutate_skill_task  # noqa: E402
import skill_rubric  # noqa: E402

sys.dont_write_bytecode = _write_bytecode
MAX_SCORE = skill_rubric.MAX_SCORE


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    (root / "scripts").mkdir(parents=True)
    for name in SCRIPTS:
        shutil.copy2(REPO / "scripts" / name, root / "scripts" / name)
    copy_task_dir(root)
    (root / "work").mkdir()
    return root


def copy_task_dir(root: Path) -> None:
    """The sample task folder, with the fixture as shipped."""
    shutil.copytree(TASK_DIR, root / "tasks" / "skill-quality")
    shutil.copyfile(PRISTINE, root / ARTIFACT)


def run_step(root: Path, step: str) -> subprocess.CompletedProcess[str]:
    """Run the task file's command for ``step`` as the engine would, with this python."""
    spec = TASK[step]
    command: str = spec["command"]
    assert command.startswith("python ")
    return subprocess.run(
        shlex.quote(sys.executable) + command.removeprefix("python"),
        shell=True,
        cwd=root / spec.get("cwd", "."),
        env=ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=spec["timeout_seconds"],
    )


def parse_scorer_output(stdout: str) -> dict[str, object]:
    """The engine's reading of a scorer: exactly one JSON object, a finite number score."""

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        assert len({key for key, _ in pairs}) == len(pairs), pairs
        return dict(pairs)

    def no_constants(name: str) -> object:
        raise AssertionError(f"scorer printed {name}")

    data = json.loads(stdout.strip(), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    assert isinstance(data, dict)
    score = data["score"]
    assert isinstance(score, int | float) and not isinstance(score, bool)
    assert math.isfinite(score)
    assert isinstance(data["metrics"], dict)
    return data


def evaluate_and_score(root: Path) -> dict[str, object]:
    for step in ("runner", "scorer"):
        result = run_step(root, step)
        assert result.returncode == 0, result.stderr
    return parse_scorer_output(result.stdout)


def score_of(result: dict[str, object]) -> float:
    score = result["score"]
    assert isinstance(score, float)
    return score


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] != "work"
    }


def git_changed_lines(tmp_path: Path, before: bytes, after: bytes) -> int:
    """Insertions + deletions between two versions, counted by git as the engine does."""
    old, new = tmp_path / "numstat" / "old.md", tmp_path / "numstat" / "new.md"
    old.parent.mkdir(exist_ok=True)
    old.write_bytes(before)
    new.write_bytes(after)
    result = subprocess.run(
        ["git", "diff", "--no-index", "--numstat", "--no-ext-diff", "--no-color", "--", old, new],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    if not result.stdout.strip():
        return 0
    insertions, deletions, _ = result.stdout.split("\t", 2)
    return int(insertions) + int(deletions)  # "-" for a binary file would fail here


def difflib_changed_lines(before: str, after: str) -> int:
    diff = difflib.unified_diff(before.split("\n"), after.split("\n"), n=0, lineterm="")
    return sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))


# --- the task file ------------------------------------------------------------------


def test_task_file_is_the_seed_wiring() -> None:
    assert TASK == {
        "id": "skill-quality",
        "description": "Improve the sample SKILL.md against a rubric a reader would recognise",
        "artifacts": {"include": ["fixtures/SKILL.md"], "max_files_per_iteration": 1},
        "mutation": {"max_changed_lines": 40, "allowed_file_types": [".md"]},
        "mutator": {
            "type": "command",
            "command": "python ../../scripts/mutate_skill_task.py"
            " --task-dir . --artifact fixtures/SKILL.md",
            "cwd": "tasks/skill-quality",
            "timeout_seconds": 30,
        },
        "runner": {
            "command": "python ../../scripts/evaluate_skill_task.py --task-dir ."
            " --artifact fixtures/SKILL.md --output ../../work/skill-run.json",
            "cwd": "tasks/skill-quality",
            "timeout_seconds": 30,
        },
        "scorer": {
            "type": "command",
            "command": "python scripts/score_skill_task.py --input work/skill-run.json",
            "cwd": ".",
            "timeout_seconds": 30,
            "parse": {"format": "json", "score_field": "score", "metrics_field": "metrics"},
        },
        "objective": {"direction": "maximize"},
        "constraints": [],
        "policy": {"min_improvement": 0.0, "keep_when_no_baseline": True, "commit_on_keep": True},
        "budget": {"max_seconds": 120},
        "logging": {"results_path": "work/results.jsonl"},
        "isolation": {"mode": "auto", "network": False},
    }


def test_every_check_has_a_fix() -> None:
    assert list(mutate_skill_task.FIXES) == [check.id for check in skill_rubric.RUBRIC]


# --- the climb ----------------------------------------------------------------------


def test_fixture_starts_low(sandbox: Path) -> None:
    result = evaluate_and_score(sandbox)
    assert score_of(result) <= 2
    assert result["metrics"] == {
        "checks_passed": 1,
        "checks_total": len(skill_rubric.RUBRIC),
        "max_score": MAX_SCORE,
        "failed": [check.id for check in skill_rubric.RUBRIC if check.id != "no-tabs"],
        "lines": 17,
    }


def test_climb_from_fixture_one_point_per_run_then_no_change(sandbox: Path, tmp_path: Path) -> None:
    artifact = sandbox / ARTIFACT
    score = score_of(evaluate_and_score(sandbox))
    failing_at_start = round(MAX_SCORE - score)
    fixed: list[str] = []
    for _ in range(len(skill_rubric.RUBRIC) + 1):
        before = snapshot(sandbox)
        mutator = run_step(sandbox, "mutator")
        assert mutator.returncode == 0, mutator.stderr
        after = snapshot(sandbox)
        new_score = score_of(evaluate_and_score(sandbox))
        if after == before:
            break
        assert {
            path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
        } == {ARTIFACT}
        changed = git_changed_lines(tmp_path, before[ARTIFACT], after[ARTIFACT])
        assert 0 < changed <= TASK["mutation"]["max_changed_lines"]
        assert new_score >= score + 1, mutator.stdout
        fixed.append(mutator.stdout.split(":")[0])
        score = new_score
    else:
        pytest.fail("the mutator never stopped changing the artifact")
    assert score == MAX_SCORE
    assert "left unchanged" in mutator.stdout
    # The fixture is built so that each run repairs exactly one check.
    assert len(fixed) == failing_at_start == 10
    assert artifact.read_text(encoding="utf-8").endswith(
        "## Limitations\n\n"
        "- Only as good as its inputs: ask for what is missing rather than guess.\n"
        "- Not a substitute for a person reviewing the result.\n"
    )


def test_mutator_is_deterministic(tmp_path: Path) -> None:
    roots = []
    for name in ("one", "two"):
        root = tmp_path / name
        (root / "scripts").mkdir(parents=True)
        for script in SCRIPTS:
            shutil.copy2(REPO / "scripts" / script, root / "scripts" / script)
        copy_task_dir(root)
        roots.append(root)
    expected = PRISTINE.read_text(encoding="utf-8")
    for _ in range(len(skill_rubric.RUBRIC)):
        expected, _fixed = mutate_skill_task.improve(expected)
        outputs = []
        for root in roots:
            assert run_step(root, "mutator").returncode == 0
            outputs.append((root / ARTIFACT).read_bytes())
        assert outputs[0] == outputs[1] == expected.encode("utf-8")


# --- the evaluator and the scorer ---------------------------------------------------


def test_scorer_prints_exactly_one_json_object(sandbox: Path) -> None:
    run_step(sandbox, "runner")
    result = run_step(sandbox, "scorer")
    assert result.returncode == 0
    assert result.stdout.endswith("}\n") and result.stdout.count("\n") == 1
    data = parse_scorer_output(result.stdout)
    assert data["score"] == 1.0
    assert result.stderr == ""


def test_findings_name_every_check(sandbox: Path) -> None:
    assert run_step(sandbox, "runner").returncode == 0
    findings = json.loads((sandbox / "work" / "skill-run.json").read_text(encoding="utf-8"))
    assert findings["artifact"] == "fixtures/SKILL.md"
    assert (findings["passed"], findings["total"], findings["lines"]) == (1, 11, 17)
    assert [check["id"] for check in findings["checks"]] == list(skill_rubric.CHECKS_BY_ID)
    for check in findings["checks"]:
        assert set(check) == {"id", "description", "passed", "weight", "detail"}
    details = {check["id"]: check["detail"] for check in findings["checks"]}
    assert details["front-matter"] == "front matter has no 'description'"
    assert details["steps"] == "'## Steps' has 0 numbered step(s); it needs 3 or more"
    assert details["line-length"] == "line over 100 characters on line(s) 8"


def test_evaluator_fails_clearly_on_a_missing_artifact(sandbox: Path) -> None:
    (sandbox / ARTIFACT).unlink()
    result = run_step(sandbox, "runner")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "fixtures/SKILL.md: no such file" in result.stderr
    assert not (sandbox / "work" / "skill-run.json").exists()


@pytest.mark.parametrize(
    ("findings", "message"),
    [
        (None, "no such file (did the runner run?)"),
        ("not json", "not valid JSON"),
        ("[]", "the findings must be a JSON object"),
        ('{"checks": [], "checks": []}', "duplicate key(s) checks"),
        ('{"checks": [{"id": "title", "passed": NaN}]}', "NaN is not a number"),
        ('{"checks": [{"id": "nope", "passed": true}]}', "unknown check id 'nope'"),
        ('{"checks": [{"id": "title", "passed": 1}]}', "'passed' must be true/false"),
        ('{"checks": [{"id": "title", "passed": true}]}', "no verdict for check(s) front-matter"),
    ],
)
def test_scorer_fails_clearly_on_bad_findings(
    sandbox: Path, findings: str | None, message: str
) -> None:
    if findings is not None:
        (sandbox / "work" / "skill-run.json").write_text(findings, encoding="utf-8")
    result = run_step(sandbox, "scorer")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("score_skill_task: work/skill-run.json: ")
    assert message in result.stderr


def test_mutator_refuses_a_missing_or_linked_artifact(sandbox: Path, tmp_path: Path) -> None:
    artifact = sandbox / ARTIFACT
    outside = tmp_path / "elsewhere.md"
    outside.write_text("# Not in the sandbox\n", encoding="utf-8")
    artifact.unlink()
    result = run_step(sandbox, "mutator")
    assert (result.returncode, result.stdout) == (1, "")
    assert "fixtures/SKILL.md: no such file" in result.stderr
    artifact.symlink_to(outside)
    result = run_step(sandbox, "mutator")
    assert result.returncode == 1
    assert "is a symbolic link" in result.stderr
    assert outside.read_text(encoding="utf-8") == "# Not in the sandbox\n"


# --- the climb from any start -------------------------------------------------------

FRAGMENTS = [
    "---\nname: demo\n---",
    "---\ndescription: TODO\n---",
    "---",
    "# Demo skill",
    "#Demo",
    "# TODO",
    "#",
    "## When to use",
    "## when to use:",
    "### Steps",
    "## Steps",
    "## Examples",
    "## Limitations",
    "## When not to use",
    "## Notes",
    "- a bullet",
    "* another bullet",
    "1. a step",
    "2) another step",
    "- TODO",
    "1. TODO",
    "```\ncode line\n```",
    "```python",
    "~~~\nTODO\n~~~",
    "Some prose. More prose.",
    "Trailing spaces   ",
    "Trailing tab\t",
    "\tindented with a tab",
    "inner\ttab",
    "   ",
    "",
    "> a quote",
    "| a | b |",
    "FIXME: this",
    "This is XXX text",
    "a line with CRLF\r",
    "word " * 30,
    "- " + "long item " * 15,
    "## " + "Long heading " * 9,
    "x" * 130,
    "## Steps TODO",
    "#Title TODO",
    "a (TODO) b",
    "# Title\n# Second",
    "---\nname: TODO\ndescription: >\n  folded\n---",
    "## Examples\n```\nTODO\n```",
    "```",
    "\t\t" + "t " * 49,
    "# " + "T " * 49,
    "x " * 60 + "# y",
]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    fragments=st.lists(st.sampled_from(FRAGMENTS), max_size=8),
    ending=st.sampled_from(["", "\n", "\n\n\n"]),
)
def test_any_start_climbs_to_a_full_score(fragments: list[str], ending: str) -> None:
    text = "\n".join(fragments) + ending
    for _ in range(len(skill_rubric.RUBRIC) + 1):
        before = {r.id for r in skill_rubric.evaluate(text) if r.passed}
        improved, fixed = mutate_skill_task.improve(text)
        if fixed is None:
            assert improved == text
            break
        after = {r.id for r in skill_rubric.evaluate(improved) if r.passed}
        assert before < after and fixed in after, (fixed, text, improved)
        assert difflib_changed_lines(text, improved) <= 40
        text = improved
    else:
        pytest.fail("the climb did not end")
    assert all(result.passed for result in skill_rubric.evaluate(text))


def test_the_pristine_fixture_is_the_shipped_one() -> None:
    """tests/data holds the fixture as the project last changed it: keep commits of the
    README's main job (``loopengine(skill-quality): keep ...``) do not count."""
    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", *args], cwd=REPO, env=ENV, capture_output=True,
                              check=False)

    last = git("log", "-1", "--format=%H", "--invert-grep", "--grep=^loopengine(",
               "--", ARTIFACT)
    if last.returncode != 0 or not last.stdout.strip():
        pytest.skip("not a git checkout with history")
    shipped = git("show", f"{last.stdout.decode().strip()}:{ARTIFACT}")
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout == PRISTINE.read_bytes()
