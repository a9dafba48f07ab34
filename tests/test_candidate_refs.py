"""Candidate refs (contract section 11): every candidate as a commit a reviewer can read
with plain git, under refs/loopengine/<task_id>/<run_id>."""

from __future__ import annotations

from typing import Any

from conftest import BIN, PY, Repo, default_task

NOTES = "tasks/demo/notes.md"


def trailer(r: Repo, rev: str, key: str) -> str:
    return r.git("log", "-1", f"--format=%(trailers:key={key},valueonly)", rev).strip()


def test_a_keep_is_saved_as_a_ref_with_trailers_and_status(repo: Repo, guarded: Any) -> None:
    start = repo.git("rev-parse", "HEAD").strip()
    rec = guarded().record
    assert rec["status"] == "keep"
    assert rec["ref"] == f"refs/loopengine/demo/{rec['run_id']}"
    assert rec["batch_id"] is None
    # Plain git reads it: its parent is the commit the sandbox started from.
    assert repo.git("rev-parse", f"{rec['ref']}^").strip() == start
    assert repo.git("diff", "--name-only", f"{rec['ref']}^", rec["ref"]).split() == [NOTES]
    assert repo.git("show", f"{rec['ref']}:{NOTES}") == "first\nmore\n"
    assert trailer(repo, rec["ref"], "Loopengine-Status") == "keep"
    assert trailer(repo, rec["ref"], "Loopengine-Run") == rec["run_id"]
    assert trailer(repo, rec["ref"], "Loopengine-Task") == "demo"
    assert trailer(repo, rec["ref"], "Loopengine-Score") == "2.0"
    assert trailer(repo, rec["ref"], "Loopengine-Baseline") == "none"
    # The keep commit on the branch holds the same tree.
    assert repo.git("rev-parse", f"{rec['ref']}^{{tree}}") == \
        repo.git("rev-parse", "HEAD^{tree}")


def test_a_discard_is_saved_and_can_be_cherry_picked(repo: Repo, guarded: Any) -> None:
    repo.write_task(default_task(policy__min_improvement=5.0))
    repo.commit("strict")
    guarded()  # the first run measures the baseline (a keep when nothing is stored)
    rec = guarded().record
    assert rec["status"] == "discard"
    assert trailer(repo, rec["ref"], "Loopengine-Status") == "discard"
    assert repo.git("log", "-1", "--format=%s", rec["ref"]).startswith("loopengine(demo): discard")
    patch = repo.git("diff", f"{rec['ref']}^", rec["ref"])
    assert "+more" in patch
    # A reviewer takes it anyway, with plain git.
    repo.git("-c", "user.name=T", "-c", "user.email=t@e", "cherry-pick", rec["ref"])
    assert repo.read(NOTES).endswith("more\nmore\n")


def test_a_crash_in_evaluation_has_a_ref_a_crash_of_the_mutator_has_none(repo: Repo,
                                                                          guarded: Any) -> None:
    repo.write_task(default_task(runner__command="exit 3"))
    repo.commit("broken runner")
    rec = guarded().record
    assert rec["status"] == "crash" and rec["crash_kind"] == "runner"
    assert trailer(repo, rec["ref"], "Loopengine-Status") == "crash"
    repo.write_task(default_task(mutator__command="exit 4"))
    repo.commit("broken mutator")
    rec = guarded().record
    assert rec["status"] == "crash" and rec["crash_kind"] == "mutator"
    assert rec["ref"] is None
    assert repo.git("for-each-ref", f"refs/loopengine/demo/{rec['run_id']}") == ""


def test_a_ref_holds_only_the_artifacts_not_what_validation_refused(repo: Repo,
                                                                    guarded: Any) -> None:
    repo.write_task(default_task(
        mutator__command=f"{PY} {BIN}/mutate.py append notes.md more write dump.md big"))
    repo.commit("a messy mutator")
    rec = guarded().record
    assert rec["status"] == "discard"
    assert "tasks/demo/dump.md" in rec["changed_files"]
    files = repo.git("diff", "--name-only", f"{rec['ref']}^", rec["ref"]).split()
    assert files == [NOTES]
    assert trailer(repo, rec["ref"], "Loopengine-Status") == "discard"


def test_no_ref_outside_git(tmp_path: Any) -> None:
    r = Repo(tmp_path / "plain", git=False)
    r.write("tasks/demo/notes.md", "first\n")
    r.write_task()
    rec = r.run().record
    assert rec["status"] == "keep"
    assert rec["ref"] is None
