"""``loopengine init`` scaffolds a task that validates and runs; ``schema`` describes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_support import invoke
from conftest import PROJECT, Repo
from test_task import conforms

from loopengine.task import json_schema, load_task

FILES = ["evaluate.py", "mutate.py", "notes.md", "rubric.json", "score.py", "task.yaml"]


def test_init_makes_a_scaffold_that_validates(repo: Repo) -> None:
    result = invoke("init", "my-task", cwd=repo.path)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "created tasks/my-task/: task.yaml, notes.md, rubric.json, mutate.py, evaluate.py, "
        "score.py\n"
        "next:\n"
        "  loopengine validate --task tasks/my-task/task.yaml\n"
        "  loopengine run --task tasks/my-task/task.yaml\n")
    folder = repo.path / "tasks" / "my-task"
    assert sorted(p.name for p in folder.iterdir()) == FILES
    checked = invoke("validate", "--task", "tasks/my-task/task.yaml", cwd=repo.path)
    first, isolation_line = checked.stdout.splitlines()
    assert first == "tasks/my-task/task.yaml: ok (task my-task)"
    assert isolation_line.startswith("isolation: ")
    task = load_task(folder / "task.yaml", repo.path)
    assert task.id == "my-task" and task.task_dir == "tasks/my-task"
    assert "{{" not in (folder / "task.yaml").read_text()


def test_the_scaffold_runs_keeps_climbs_and_then_discards(repo: Repo, guarded) -> None:
    assert invoke("init", "demo2", "--repo", str(repo.path)).exit_code == 0
    records = [guarded(task="tasks/demo2/task.yaml").record for _ in range(5)]
    assert [r["status"] for r in records] == ["keep"] * 4 + ["discard"]
    assert records[0]["reason"] == ("score 2.0 beats baseline 1.0 by 1 (higher is better, "
                                    "min_improvement 0)")
    assert [r["candidate_score"] for r in records] == [2.0, 3.0, 4.0, 5.0, 5.0]
    assert [r["baseline_score"] for r in records] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert records[4]["reason"] == "candidate has no change"
    assert records[0]["changed_files"] == ["tasks/demo2/notes.md"]
    assert records[0]["metrics"] == {"checks_passed": 2, "checks_total": 5, "words": 19}
    notes = (repo.path / "tasks/demo2/notes.md").read_text()
    assert [line for line in notes.splitlines() if line.startswith("## ")] == [
        "## Purpose", "## Install", "## Usage", "## Examples", "## Limits"]
    assert repo.log()[:4] == [f"loopengine(demo2): keep {s}" for s in ("5.0", "4.0", "3.0",
                                                                        "2.0")]


def test_the_scaffold_constraint_discards_a_long_candidate(repo: Repo, tmp_path: Path) -> None:
    assert invoke("init", "wordy", "--repo", str(repo.path)).exit_code == 0
    patch = tmp_path / "wordy.diff"
    words = " ".join(["word"] * 30)
    patch.write_text("--- a/tasks/wordy/notes.md\n+++ b/tasks/wordy/notes.md\n"
                     "@@ -3,3 +3,18 @@\n ## Purpose\n \n"
                     " What this project is for, in two sentences.\n"
                     + "".join(f"+{words}\n" for _ in range(15)))
    rec = json.loads(repo.run("--patch", str(patch), task="tasks/wordy/task.yaml").stdout)
    assert rec["status"] == "discard"
    assert rec["violations"] == [{"rule": "constraint.max", "path": "words", "limit": 400,
                                  "actual": rec["metrics"]["words"]}]


def test_init_works_outside_git_and_runs_in_a_copy(tmp_path: Path) -> None:
    plain = Repo(tmp_path / "plain", git=False)
    assert invoke("init", "t", cwd=plain.path).exit_code == 0
    rec = json.loads(plain.run(task="tasks/t/task.yaml").stdout)
    assert (rec["status"], rec["sandbox"], rec["commit"]) == ("keep", "copy", None)


def test_init_refuses_an_existing_folder(repo: Repo) -> None:
    result = invoke("init", "demo", cwd=repo.path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == ("loopengine: tasks/demo/ already exists; nothing was written "
                             "(pick another id, or remove the folder first)\n")
    assert sorted(p.name for p in (repo.path / "tasks/demo").iterdir()) == ["notes.md",
                                                                            "task.yaml"]


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "with space", "", "ü", "a\nb"])
def test_init_rejects_an_id_outside_the_alphabet(repo: Repo, bad: str) -> None:
    result = invoke("init", "--repo", str(repo.path), "--", bad)
    assert result.exit_code == 2
    assert "Invalid value for 'TASK_ID'" in result.stderr
    assert sorted(p.name for p in (repo.path / "tasks").iterdir()) == ["demo"]


@pytest.mark.parametrize("odd", ["1e3", "true", "null", "-x", "0.5", "a..b"])
def test_ids_that_yaml_would_misread_still_validate(repo: Repo, odd: str) -> None:
    assert invoke("init", "--repo", str(repo.path), "--", odd).exit_code == 0
    assert load_task(repo.path / "tasks" / odd / "task.yaml", repo.path).id == odd


def test_init_from_a_subfolder_uses_the_repository_root(repo: Repo) -> None:
    result = invoke("init", "deep", cwd=repo.path / "tasks" / "demo")
    assert (repo.path / "tasks/deep/task.yaml").is_file()
    assert "loopengine validate --task ../deep/task.yaml" in result.stdout


def test_init_notes_when_work_is_not_ignored(tmp_path: Path) -> None:
    fresh = Repo(tmp_path / "fresh")
    out = invoke("init", "t", "--repo", str(fresh.path)).stdout
    assert out.endswith("note: add /work/ to .gitignore (loopengine writes its records "
                        "there)\n")


# -- the schema ---------------------------------------------------------------------------


def test_schema_command_prints_the_schema_the_loader_uses() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json_schema()


def test_the_sample_task_and_the_scaffold_conform_to_the_schema(repo: Repo) -> None:
    schema = json.loads(invoke("schema").stdout)
    sample = yaml.safe_load((PROJECT / "tasks/skill-quality/task.yaml").read_text())
    assert conforms(schema, sample)
    invoke("init", "fresh", "--repo", str(repo.path))
    scaffold = yaml.safe_load((repo.path / "tasks/fresh/task.yaml").read_text())
    assert conforms(schema, scaffold)
    scaffold["runner"]["timeout_secs"] = 3  # and the check is not vacuous
    assert not conforms(schema, scaffold)


def test_readme_shows_how_to_point_an_editor_at_the_schema() -> None:
    readme = (PROJECT / "docs/commands.md").read_text()
    assert "# The commands" in readme
    assert "uv run loopengine schema > task.schema.json" in readme
    assert "# yaml-language-server: $schema=" in readme
