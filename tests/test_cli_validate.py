"""``loopengine validate`` as a preflight (issue 10, point 6) and a safe results path at
run time (issue 9, point 5): real repositories, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, PY, Repo, Result, default_task
from contract_checks import check_record, stderr_line

TASK = "tasks/demo/task.yaml"


def validate(repo: Repo, *args: str) -> Result:
    return repo.run("--task", TASK, *args, command="validate")


def use(repo: Repo, **overrides: object) -> None:
    repo.write_task(default_task(**overrides))
    if repo.git("status", "--porcelain"):
        repo.commit("task")


def lines(result: Result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()


def test_every_error_at_once_one_a_line(repo: Repo) -> None:
    task = default_task(runner__timeout_secs=5, mutation__max_changed_lines=True,
                        objective__direction="up", logging__results_path=".git/config")
    del task["budget"]
    repo.write_task(task)
    result = validate(repo)
    assert result.code == 1 and result.stdout == ""
    assert lines(result) == [
        f"loopengine: {TASK}: mutation.max_changed_lines: expected an integer, got bool",
        f"loopengine: {TASK}: runner.timeout_secs: unknown key (did you mean timeout_seconds?)",
        f"loopengine: {TASK}: objective.direction: expected one of maximize, minimize, got 'up'",
        f"loopengine: {TASK}: budget: missing required section",
        f"loopengine: {TASK}: logging.results_path: is inside .git/, got '.git/config'",
    ]
    assert not (repo.path / "work").exists()


@pytest.mark.parametrize(("path", "problem"), [
    (".git/HEAD", "is inside .git/"),
    (".git/hooks/pre-commit", "is inside .git/"),
    ("README.md", "is a file git tracks"),
    ("tasks/demo/notes.md", "is an artifact (artifacts.include)"),
    ("tasks/demo/task.yaml", "is the task file"),
    ("tasks", "is a directory"),
])  # fmt: skip
def test_a_results_path_that_is_not_allowed(repo: Repo, path: str, problem: str) -> None:
    repo.write_task(default_task(logging__results_path=path))
    result = validate(repo)
    assert result.code == 1
    assert lines(result) == [f"loopengine: {TASK}: logging.results_path: {problem}, "
                             f"got {path!r}"]


def test_a_cwd_that_does_not_exist_or_that_the_sandbox_would_not_have(repo: Repo) -> None:
    repo.write("build/out.txt", "ignored\n")
    repo.write(".gitignore", "/work/\n/build/\n")
    use(repo, mutator__cwd="tasks/nope", runner__cwd="build", scorer__cwd="README.md")
    result = validate(repo)
    assert result.code == 1 and result.stdout == ""
    assert lines(result) == [
        f"loopengine: {TASK}: mutator.cwd: 'tasks/nope' does not exist in the repository",
        f"loopengine: {TASK}: runner.cwd: 'build' holds no file that git tracks or sees "
        "(only ignored ones, or none), so the sandbox will not have it",
        f"loopengine: {TASK}: scorer.cwd: 'README.md' is not a directory",
    ]


def test_a_program_that_is_not_found(repo: Repo) -> None:
    repo.write("tasks/demo/plain.sh", "#!/bin/sh\n")  # not executable
    use(repo, mutator__command="no-such-program-xyz --flag",
        runner__command="./missing.sh && ./plain.sh",
        scorer__command=f"{PY} ../../scripts/score.py")
    result = validate(repo)
    assert result.code == 1
    assert lines(result) == [
        f"loopengine: {TASK}: mutator.command: program 'no-such-program-xyz' not found on PATH",
        f"loopengine: {TASK}: runner.command: program './missing.sh' in 'tasks/demo' not found",
        f"loopengine: {TASK}: runner.command: program './plain.sh' in 'tasks/demo' is not "
        "executable (chmod +x)",
        f"loopengine: {TASK}: scorer.command: script '../../scripts/score.py' (run by {PY}) "
        "not found in 'tasks/demo'",
    ]


@pytest.mark.parametrize("command", [
    "true",
    "echo hi > out.txt 2>&1",
    "FOO=1 BAR=2 true",
    "cd elsewhere && ./anything",
    "if true; then nope-xyz; fi",
    "$TOOL run",
    "exec true",
    "sh -c 'whatever'",
    f"{PY} -m json.tool notes.md",
    f"{PY} -c 'print(1)'",
    "true | cat",
])  # fmt: skip
def test_shell_builtins_and_syntax_are_not_programs_to_find(repo: Repo, command: str) -> None:
    use(repo, runner__command=command)
    result = validate(repo)
    assert (result.code, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == f"{TASK}: ok (task demo)"


def test_an_artifact_glob_that_matches_nothing_is_a_warning(repo: Repo) -> None:
    use(repo, artifacts__include=["notes.md", "fixtures/SKILL.md"])
    result = validate(repo)
    assert result.code == 0
    assert result.stdout.splitlines()[0] == f"{TASK}: ok (task demo)"
    assert lines(result) == [
        f"loopengine: {TASK}: artifacts.include[1]: warning: 'tasks/demo/fixtures/SKILL.md' "
        "matches no file in the repository; a candidate can only create it "
        "(policy.keep_when_no_baseline decides its first keep), and a change anywhere else "
        "is discarded as not_an_artifact"
    ]


def test_preflight_checks_come_with_the_schema_errors(repo: Repo) -> None:
    use(repo, runner__timeout_secs=1, mutator__cwd="tasks/nope",
        artifacts__include=["nothing-*.md"])
    result = validate(repo)
    assert result.code == 1
    assert lines(result) == [
        f"loopengine: {TASK}: runner.timeout_secs: unknown key (did you mean timeout_seconds?)",
        f"loopengine: {TASK}: mutator.cwd: 'tasks/nope' does not exist in the repository",
        f"loopengine: {TASK}: artifacts.include[0]: warning: 'tasks/demo/nothing-*.md' "
        "matches no file in the repository; a candidate can only create it "
        "(policy.keep_when_no_baseline decides its first keep), and a change anywhere else "
        "is discarded as not_an_artifact",
    ]


def test_validate_starts_without_the_engine_or_heavy_libraries(repo: Repo) -> None:
    proc = subprocess.run([PY, "-X", "importtime", "-m", "loopengine", "validate", "--task",
                           TASK], cwd=repo.path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    for heavy in ("loopengine.engine", "loopengine.iteration", "rich", "matplotlib", "mcp",
                  "ray"):
        assert heavy not in imported, heavy
    assert "pydantic" in imported  # the schema, loaded once, by load_task


# --- validate --run ----------------------------------------------------------------------


def state(repo: Repo) -> tuple[str, str, list[str]]:
    work = repo.path / "work"
    files = sorted(str(p.relative_to(repo.path)) for p in work.rglob("*") if p.is_file()) \
        if work.exists() else []
    return repo.git("status", "--porcelain", "--ignored"), repo.git("log", "--format=%H"), files


def test_run_measures_the_baseline_once_and_stores_nothing(repo: Repo) -> None:
    before = state(repo)
    result = validate(repo, "--run")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{TASK}: ok (task demo)"
    assert "baseline score: 1.0 (measured once in a sandbox; nothing stored)" in result.stdout
    assert 'metrics: {"bytes": 6}' in result.stdout
    after = state(repo)
    # work/ may now hold the engine's lock files, nothing else: no record, no baseline,
    # no run folder.
    assert after[0].replace("!! work/\n", "") == before[0].replace("!! work/\n", "")
    assert after[1] == before[1]
    assert not [f for f in after[2] if not f.endswith(".lock")], after[2]
    assert os.listdir(repo.path / "work" / "runs") == [".active"]
    assert repo.results() == []
    assert not (repo.path / "work" / "baselines").exists()


def test_run_says_which_constraint_metrics_the_scorer_does_not_emit(repo: Repo) -> None:
    use(repo, constraints=[{"metric": "bytes", "max": 100}, {"metric": "latency_ms", "max": 5}])
    result = validate(repo, "--run")
    assert result.code == 1
    assert "constraint bytes <= 100: 6 (holds)" in result.stdout
    assert lines(result) == [
        f"loopengine: {TASK}: constraints[1].metric: the scorer does not emit 'latency_ms' "
        "(its metrics: bytes); every run would crash"
    ]


def test_run_with_a_failing_runner_says_why(repo: Repo) -> None:
    use(repo, runner__command="echo broken >&2; exit 3")
    result = validate(repo, "--run")
    assert result.code == 1
    err = lines(result)
    assert err[0] == ("loopengine: the baseline could not be evaluated: crash (runner): "
                      "runner exited with status 3")
    assert "broken" in result.stderr
    assert repo.results() == []


def test_run_is_not_attempted_on_a_bad_task(repo: Repo) -> None:
    use(repo, runner__cwd="tasks/nope")
    result = validate(repo, "--run")
    assert result.code == 1 and "baseline" not in result.stdout


# --- at run time ---------------------------------------------------------------------------


def test_results_path_into_git_is_a_config_crash_at_run_time(repo: Repo, guarded) -> None:
    config = (repo.path / ".git" / "config").read_bytes()
    use(repo, logging__results_path=".git/config")
    rec = check_record(repo, result := guarded())
    assert rec["status"] == "crash" and rec["crash_kind"] == "config"
    assert rec["reason"] == (f"{TASK}: logging.results_path: is inside .git/, "
                             "got '.git/config'")
    assert stderr_line(result) == f"loopengine: {rec['reason']}"
    assert (repo.path / ".git" / "config").read_bytes() == config
    assert repo.results() == [rec]  # in the default results file
    assert repo.git("status", "--porcelain") == ""


def test_results_path_through_a_symlink_into_a_hook(repo: Repo, guarded) -> None:
    os.symlink("../.git/hooks/pre-commit", repo.path / "tasks" / "demo" / "log.jsonl")
    repo.commit("a link")
    use(repo, logging__results_path="tasks/demo/log.jsonl")
    rec = check_record(repo, guarded())
    assert rec["crash_kind"] == "config"
    assert "logging.results_path: is inside .git/ (after resolving symlinks)" in rec["reason"]
    assert not (repo.path / ".git" / "hooks" / "pre-commit").exists()


def test_an_include_that_matches_nothing_is_not_the_candidates_fault(repo: Repo,
                                                                     guarded) -> None:
    # The artifact is notes.md, the task names Notes.md: the mutator's edit is outside.
    use(repo, artifacts__include=["Notes.md"])
    rec = check_record(repo, guarded())
    assert rec["status"] == "crash" and rec["crash_kind"] == "config"
    assert rec["reason"] == ("artifacts.include 'tasks/demo/Notes.md' matches no file in "
                             "the repository: check the path in the task file (loopengine "
                             "validate); the candidate changed tasks/demo/notes.md")


def test_with_other_artifacts_it_is_a_discard_that_names_the_entry(repo: Repo,
                                                                  guarded) -> None:
    repo.write("tasks/demo/other.md", "x\n")
    use(repo, artifacts__include=["other.md", "Notes.md"])
    rec = check_record(repo, guarded())
    assert rec["status"] == "discard"
    assert rec["reason"] == ("tasks/demo/notes.md changed but is not an artifact "
                             "(artifacts.include); artifacts.include 'tasks/demo/Notes.md' "
                             "matches no file in the repository: check the path in the task "
                             "file (loopengine validate)")


def test_a_mutator_may_create_an_artifact_that_does_not_exist_yet(repo: Repo,
                                                                 guarded) -> None:
    use(repo, artifacts__include=["new.md"],
        mutator__command=f"{PY} {BIN}/append_line.py new.md hello",
        scorer__command=f"{PY} {BIN}/score_lines.py new.md")
    rec = check_record(repo, guarded())
    assert rec["status"] == "keep", rec["reason"]


def test_the_schema_is_printed_from_pydantic(repo: Repo) -> None:
    result = repo.run(command="schema")
    schema = json.loads(result.stdout)
    assert schema["properties"]["runner"]["properties"]["timeout_seconds"]["exclusiveMinimum"] \
        == 0
    assert "$defs" not in schema and "$ref" not in json.dumps(schema)
    assert yaml.safe_load(yaml.safe_dump(schema)) == schema
    assert Path(TASK).name == "task.yaml"


def test_a_results_path_made_unsafe_during_the_run_is_not_written(repo: Repo) -> None:
    # An unisolated mutator plants a symlink to a hook where the records go.
    link = repo.path / "logs" / "r.jsonl"
    plant = f"mkdir -p {link.parent} && ln -s ../.git/hooks/pre-commit {link}"
    use(repo, logging__results_path="logs/r.jsonl", isolation={"mode": "none"},
        mutator__command=f"{plant} && {PY} {BIN}/append_line.py notes.md more")
    result = repo.run()
    rec = result.record
    assert not (repo.path / ".git" / "hooks" / "pre-commit").exists()
    assert repo.results() == [rec]  # the default results file took it
    assert "logs/r.jsonl: cannot append the record (is inside .git/ (after resolving " \
        "symlinks)); it went to work/results.jsonl" in result.stderr


def test_run_with_a_runner_that_changes_the_artifact(repo: Repo) -> None:
    use(repo, runner__command="echo changed >> notes.md")
    result = validate(repo, "--run")
    assert result.code == 1
    assert lines(result) == [
        "loopengine: the runner or scorer changed an artifact while measuring the baseline; "
        "every candidate would be discarded (\"an artifact changed after validation\")"]
    assert repo.read("tasks/demo/notes.md") == "first\n"


def test_run_with_a_scorer_that_prints_garbage(repo: Repo) -> None:
    use(repo, scorer__command="echo not json")
    result = validate(repo, "--run")
    assert result.code == 1
    assert lines(result)[0].startswith("loopengine: the baseline could not be evaluated: "
                                       "crash (scorer): ")


@pytest.mark.parametrize(("path", "problem"), [
    ("tasks/demo", "is a directory"),
    ("README.md", "is a file git tracks"),
    ("tasks/demo/notes.md", "is an artifact (artifacts.include)"),
    ("tasks/demo/task.yaml", "is the task file"),
    ("work/baselines/demo.json", "is the engine's own state (work/baselines/)"),
])  # fmt: skip
def test_an_unsafe_results_path_is_a_config_crash_at_run_time(repo: Repo, guarded, path: str,
                                                              problem: str) -> None:
    use(repo, logging__results_path=path)
    before = {p: (repo.path / p).read_bytes() for p in ("README.md", "tasks/demo/notes.md")}
    rec = check_record(repo, guarded())
    assert (rec["status"], rec["crash_kind"]) == ("crash", "config")
    assert rec["reason"] == f"{TASK}: logging.results_path: {problem}, got {path!r}"
    assert {p: (repo.path / p).read_bytes() for p in before} == before
    assert repo.results() == [rec]
