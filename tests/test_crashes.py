"""Every way an iteration can crash, as the user sees it: record, exit code, files, git."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
from conftest import BIN, PY, Repo, default_task
from contract_checks import all_dead, check_record, read_pid, stderr_line


def sh(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def use(repo: Repo, **overrides: object) -> None:
    """Commit the demo task with these overrides."""
    repo.write_task(default_task(**overrides))
    repo.commit("task")


# With no stored baseline, the main tree's artifacts are measured first (contract section 3,
# step 7): a runner or scorer that fails does so on the baseline, and the reason says so.
BASELINE = (" (the baseline's own evaluation failed: the artifacts as they are in the main "
            "tree, measured before the candidate)")


def crash(repo: Repo, guarded, kind: str, scored: bool = False, **overrides: object) -> dict:
    use(repo, **overrides)
    result = guarded()
    rec = check_record(repo, result)
    assert rec["status"] == "crash" and rec["crash_kind"] == kind, rec
    assert (rec["candidate_score"] is not None) == scored
    assert rec["commit"] is None
    assert stderr_line(result) == f"loopengine: crash ({kind}): {rec['reason']}"
    assert repo.git("status", "--porcelain") == ""
    assert repo.read("tasks/demo/notes.md") == "first\n"
    return rec


# -- a step that fails --------------------------------------------------------------------


@pytest.mark.parametrize("step", ["mutator", "runner", "scorer"])
def test_nonzero_exit_is_a_crash_of_that_step(repo: Repo, guarded, step: str) -> None:
    rec = crash(repo, guarded, step, **{f"{step}__command": sh("sh", f"{BIN}/exit_code.sh", "3")})
    after = BASELINE if step != "mutator" else ""
    assert rec["reason"] == f"{step} exited with status 3{after}"
    assert "exit_code.sh: to stdout" in rec["log_tail"]
    assert "exit_code.sh: to stderr" in rec["log_tail"]
    log = repo.path / "work" / "runs" / rec["run_id"] / f"{step}.log"
    assert "exit_code.sh: to stderr" in log.read_text()
    later = ["mutator", "runner", "scorer"][["mutator", "runner", "scorer"].index(step) + 1:]
    for name in later:  # the steps after a crash never run
        assert not (log.parent / f"{name}.log").exists()


def test_step_killed_by_a_signal_says_so(repo: Repo, guarded) -> None:
    rec = crash(repo, guarded, "runner", runner__command="kill -9 $$")
    assert rec["reason"] == "runner was killed by signal 9" + BASELINE


def test_log_tail_is_the_last_40_lines(repo: Repo, guarded) -> None:
    rec = crash(repo, guarded, "mutator", mutator__command="seq 1 1000; exit 1")
    assert rec["log_tail"].splitlines() == [str(n) for n in range(961, 1001)]


def test_a_step_printing_200_mb_never_blocks_and_its_tail_stays_small(
        repo: Repo, guarded) -> None:
    start = time.monotonic()
    rec = crash(repo, guarded, "runner", runner__command=f"{PY} {BIN}/flood.py 200; exit 7",
                runner__timeout_seconds=60)
    assert time.monotonic() - start < 50
    assert rec["reason"] == "runner exited with status 7" + BASELINE
    tail = rec["log_tail"]
    assert 0 < len(tail.encode()) <= 4096
    assert len(tail.splitlines()) <= 40
    assert set(tail.splitlines()) == {"x" * 1023}
    log = repo.path / "work" / "runs" / rec["run_id"] / "runner.log"
    assert log.stat().st_size >= 200 * 1024 * 1024


def test_a_scorer_printing_megabytes_is_a_scorer_crash_with_a_small_tail(
        repo: Repo, guarded) -> None:
    rec = crash(repo, guarded, "scorer", scorer__command=f"{PY} {BIN}/flood.py 20")
    assert rec["reason"].startswith("the scorer's output is not one JSON object")
    assert len(rec["reason"]) < 400
    assert 0 < len(rec["log_tail"].encode()) <= 4096


# -- timeouts and the budget --------------------------------------------------------------


def test_timeout_kills_a_child_ignoring_sigterm_and_a_detached_grandchild(
        repo: Repo, guarded, tmp_path: Path) -> None:
    stubborn, detached = tmp_path / "stubborn.pid", tmp_path / "detached.pid"
    command = (f"{PY} {BIN}/ignore_term.py {stubborn} & "
               f"sh {BIN}/detach_and_wait.sh {detached}")
    start = time.monotonic()
    # Host pids in the pid files: unisolated (under bwrap the step has its own PID namespace,
    # tests/test_isolation.py).
    rec = crash(repo, guarded, "timeout", runner__command=command, runner__timeout_seconds=1.5,
                isolation={"mode": "none"})
    assert time.monotonic() - start < 15
    assert rec["reason"] == "runner timed out after 1.5s (runner.timeout_seconds)" + BASELINE
    assert "detached" in rec["log_tail"] and "ready" in rec["log_tail"]
    assert all_dead([read_pid(stubborn), read_pid(detached)])


def test_a_detached_grandchild_of_a_successful_step_does_not_outlive_it(
        repo: Repo, guarded, tmp_path: Path) -> None:
    pidfile = tmp_path / "detached.pid"
    use(repo, isolation={"mode": "none"}, mutator__command=f"sh {BIN}/detach_child.sh {pidfile} && "
        f"{PY} {BIN}/append_line.py notes.md more")
    result = guarded()
    rec = check_record(repo, result)
    assert rec["status"] == "keep"
    assert all_dead([read_pid(pidfile)])


def test_budget_smaller_than_the_step_timeout(repo: Repo, guarded) -> None:
    start = time.monotonic()
    rec = crash(repo, guarded, "budget", budget__max_seconds=1.5,
                runner__command=f"sh {BIN}/sleep_forever.sh", runner__timeout_seconds=30)
    assert time.monotonic() - start < 15
    assert rec["reason"].startswith("runner was stopped after ")
    assert rec["reason"].endswith(": budget.max_seconds (1.5s) ran out" + BASELINE)


def test_budget_is_shared_by_the_steps(repo: Repo, guarded) -> None:
    # Each step alone is well within its timeout; together they exceed the budget.
    rec = crash(repo, guarded, "budget", budget__max_seconds=1.5,
                mutator__command="sleep 0.6", runner__command="sleep 0.6",
                scorer__command=f"sleep 0.6; {PY} {BIN}/print_score.py 1")
    reason = rec["reason"].removesuffix(BASELINE)
    assert reason.endswith("budget.max_seconds (1.5s) ran out") or \
        reason.endswith("budget.max_seconds (1.5s) was used up before the scorer could "
                        "start"), rec["reason"]


# -- a cwd missing in the sandbox ---------------------------------------------------------


def test_missing_cwd_is_a_config_crash(repo: Repo, guarded) -> None:
    rec = crash(repo, guarded, "config", runner__cwd="tasks/nowhere")
    assert rec["reason"] == "runner.cwd: 'tasks/nowhere' does not exist in the sandbox" + BASELINE
    assert rec["log_tail"] is None


def test_cwd_only_in_the_users_ignored_files_is_missing_in_the_sandbox(
        repo: Repo, guarded) -> None:
    repo.write(".gitignore", "/work/\n/build/\n")
    repo.write("build/keep.txt", "ignored\n")
    rec = crash(repo, guarded, "config", scorer__cwd="build")
    assert rec["reason"] == "scorer.cwd: 'build' does not exist in the sandbox" + BASELINE


# -- what the scorer prints ---------------------------------------------------------------

SCORER_OUTPUT = {
    "log lines before": ('starting\n{"score": 1}', "the scorer's output is not one JSON object"),
    "two objects": ('{"score": 1}\n{"score": 2}', "the scorer's output is not one JSON object"),
    "duplicate keys": ('{"score": 1, "score": 2}', "the scorer's JSON has the key 'score' twice"),
    "NaN": ('{"score": NaN}', "the scorer's JSON contains NaN, which is not a number"),
    "Infinity": ('{"score": Infinity}', "the scorer's JSON contains Infinity, which is not a "
                 "number"),
    "-Infinity": ('{"score": -Infinity}', "the scorer's JSON contains -Infinity, which is not "
                  "a number"),
    "1e400": ('{"score": 1e400}', "the scorer's JSON contains 1e400, which overflows to "
              "infinity"),
    "bool": ('{"score": true}', "score field 'score' is a bool (true), not a number"),
    "string": ('{"score": "0.9"}', "score field 'score' is a string ('0.9'), not a number"),
    "null": ('{"score": null}', "score field 'score' is null, not a number"),
    "missing": ('{"metrics": {"f1": 1}}', "the scorer's JSON has no field 'score'"),
    "metrics a list": ('{"score": 1, "metrics": [1, 2]}',
                       "metrics field 'metrics' is a list, not an object"),
    "metrics a number": ('{"score": 1, "metrics": 3}',
                         "metrics field 'metrics' is a int, not an object"),
    "an array": ('[{"score": 1}]', "the scorer printed JSON list, not an object"),
    "empty": ("", "the scorer printed nothing; it must print one JSON object"),
    "blank lines": ("\n \n\t\n", "the scorer printed nothing; it must print one JSON object"),
}


@pytest.mark.parametrize("case", list(SCORER_OUTPUT))
def test_bad_scorer_output_is_a_scorer_crash(repo: Repo, guarded, case: str) -> None:
    text, reason = SCORER_OUTPUT[case]
    rec = crash(repo, guarded, "scorer", scorer__command=sh("printf", "%s", text),
                mutator__command="true")
    assert rec["reason"].startswith(reason), rec["reason"]
    assert rec["metrics"] == {}
    if text.strip():
        assert text.strip().splitlines()[-1] in rec["log_tail"]


def test_a_scorer_log_line_on_stderr_is_fine(repo: Repo, guarded) -> None:
    use(repo, scorer__command=sh("sh", "-c", 'echo "scoring..." >&2; echo \'{"score": 4}\''))
    rec = check_record(repo, guarded())
    # Parsed on both sides: the baseline (measured first) scores 4 as well.
    assert (rec["status"], rec["candidate_score"], rec["baseline_score"]) == ("discard", 4.0, 4.0)


def test_dotted_score_field(repo: Repo, guarded) -> None:
    out = '{"metrics": {"f1": 0.75, "latency_ms": 12}}'
    use(repo, scorer__command=sh("printf", "%s", out), scorer__parse__score_field="metrics.f1")
    rec = check_record(repo, guarded())
    assert rec["status"] == "discard" and rec["baseline_score"] == 0.75
    assert rec["candidate_score"] == 0.75
    assert rec["metrics"] == {"f1": 0.75, "latency_ms": 12}


def test_dotted_score_field_missing(repo: Repo, guarded) -> None:
    rec = crash(repo, guarded, "scorer", scorer__command=sh("printf", "%s", '{"metrics": {}}'),
                scorer__parse__score_field="metrics.f1")
    assert rec["reason"] == "the scorer's JSON has no field 'metrics.f1'" + BASELINE


def test_constraint_on_a_missing_metric_is_a_crash(repo: Repo, guarded) -> None:
    rec = crash(repo, guarded, "scorer", scored=True,
                constraints=[{"metric": "latency_ms", "max": 50}])
    assert rec["reason"] == ("constraint metric 'latency_ms' is missing from the scorer's "
                             "metrics (it has: 'bytes')")
    assert rec["candidate_score"] == 2.0 and rec["metrics"] == {"bytes": 11}


# -- a repository that cannot be sandboxed faithfully -------------------------------------


def conflicting_branch(repo: Repo) -> None:
    """Branch ``other`` and ``main`` both change README.md."""
    repo.git("checkout", "-q", "-b", "other")
    repo.write("README.md", "theirs\n")
    repo.commit("theirs")
    repo.git("checkout", "-q", "main")
    repo.write("README.md", "ours\n")
    repo.commit("ours")


def git_as_user(repo: Repo, *args: str) -> None:
    repo.git("-c", "user.name=T", "-c", "user.email=t@example.com", *args, check=False)


def refused(repo: Repo, guarded, tmp_path: Path) -> dict:
    marker = tmp_path / "mutator-ran"
    use_uncommitted = default_task(mutator__command=f"touch {marker}")
    repo.write_task(use_uncommitted)
    status = repo.git("status", "--porcelain")
    result = guarded()
    rec = check_record(repo, result)
    assert rec["status"] == "crash" and rec["crash_kind"] == "sandbox", rec
    assert stderr_line(result) == f"loopengine: crash (sandbox): {rec['reason']}"
    assert not marker.exists()
    assert not (repo.path / "work" / "runs" / rec["run_id"] / "mutator.log").exists()
    assert repo.git("status", "--porcelain") == status
    return rec


def test_mid_merge(repo: Repo, guarded, tmp_path: Path) -> None:
    conflicting_branch(repo)
    git_as_user(repo, "merge", "other")
    assert (repo.path / ".git" / "MERGE_HEAD").exists()
    rec = refused(repo, guarded, tmp_path)
    assert rec["reason"] == "the repository is in the middle of a merge; finish or abort it first"
    assert (repo.path / ".git" / "MERGE_HEAD").exists()


def test_mid_rebase(repo: Repo, guarded, tmp_path: Path) -> None:
    conflicting_branch(repo)
    git_as_user(repo, "rebase", "other")
    rec = refused(repo, guarded, tmp_path)
    assert rec["reason"] == "the repository is in the middle of a rebase; finish or abort it first"
    assert (repo.path / ".git" / "rebase-merge").exists()


def test_mid_cherry_pick(repo: Repo, guarded, tmp_path: Path) -> None:
    conflicting_branch(repo)
    git_as_user(repo, "cherry-pick", "other")
    rec = refused(repo, guarded, tmp_path)
    assert rec["reason"] == ("the repository is in the middle of a cherry-pick; "
                             "finish or abort it first")


def test_artifact_staged_differs_from_working_tree(repo: Repo, guarded, tmp_path: Path) -> None:
    repo.write("tasks/demo/notes.md", "staged\n")
    repo.git("add", "tasks/demo/notes.md")
    repo.write("tasks/demo/notes.md", "working tree\n")
    rec = refused(repo, guarded, tmp_path)
    assert rec["reason"] == ("tasks/demo/notes.md: the artifact's staged content differs from "
                             "its working-tree content; stage or unstage it first")
    assert repo.read("tasks/demo/notes.md") == "working tree\n"
    assert repo.git("show", ":tasks/demo/notes.md") == "staged\n"


def test_a_staged_artifact_matching_the_working_tree_runs(repo: Repo, guarded) -> None:
    repo.write("tasks/demo/notes.md", "first\nstaged\n")
    repo.git("add", "tasks/demo/notes.md")
    rec = check_record(repo, guarded())
    assert rec["status"] == "keep" and rec["candidate_score"] == 3.0


# -- the command line ---------------------------------------------------------------------


def test_a_patch_that_does_not_apply_is_a_mutator_crash(repo: Repo, guarded,
                                                        tmp_path: Path) -> None:
    patch = tmp_path / "bad.patch"
    patch.write_text("--- a/tasks/demo/notes.md\n+++ b/tasks/demo/notes.md\n"
                     "@@ -1 +1 @@\n-not there\n+second\n")
    result = guarded("--patch", str(patch))
    rec = check_record(repo, result)
    assert rec["status"] == "crash" and rec["crash_kind"] == "mutator"
    assert rec["reason"] == (f"the patch {patch} does not apply: "
                             "patch failed: tasks/demo/notes.md:1")
    assert "notes.md" in rec["log_tail"]
    assert repo.read("tasks/demo/notes.md") == "first\n"


@pytest.mark.parametrize("args", [[], ["--task", "tasks/demo/task.yaml", "--bogus"],
                                  ["--task"]])
def test_click_usage_error_exits_2(repo: Repo, args: list[str]) -> None:
    result = repo.run(*args, task="")
    assert result.code == 2
    assert result.stdout == ""
    assert "Error:" in result.stderr and "Traceback" not in result.stderr
    assert not (repo.path / "work").exists()
