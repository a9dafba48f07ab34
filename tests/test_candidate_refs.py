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
    assert trailer(repo, rec["ref"], "Loopengine-Baseline") == "1.0"  # measured first
    # The keep commit on the branch holds the same tree.
    assert repo.git("rev-parse", f"{rec['ref']}^{{tree}}") == \
        repo.git("rev-parse", "HEAD^{tree}")


def test_a_discard_is_saved_and_can_be_cherry_picked(repo: Repo, guarded: Any) -> None:
    repo.write_task(default_task(policy__min_improvement=5.0))
    repo.commit("strict")
    # The first run measures the baseline (1) before the candidate (2): not 5 better.
    rec = guarded().record
    assert rec["status"] == "discard" and rec["baseline_score"] == 1.0
    assert trailer(repo, rec["ref"], "Loopengine-Status") == "discard"
    assert repo.git("log", "-1", "--format=%s", rec["ref"]).startswith("loopengine(demo): discard")
    patch = repo.git("diff", f"{rec['ref']}^", rec["ref"])
    assert "+more" in patch
    # A reviewer takes it anyway, with plain git.
    repo.git("-c", "user.name=T", "-c", "user.email=t@e", "cherry-pick", rec["ref"])
    assert repo.read(NOTES) == "first\nmore\n"


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


# ---------------------------------------------------------------------------
# show --apply and gc


def test_show_apply_reproposes_a_discard_rebased_onto_the_new_baseline(repo: Repo) -> None:
    repo.write(NOTES, "one\ntwo\nthree\nfour\n")
    repo.write_task(default_task(policy__min_improvement=0.5))
    repo.commit("four lines")
    first = repo.run().record  # measures the baseline and keeps "more"
    assert first["status"] == "keep"
    repo.write_task(default_task(policy__min_improvement=5.0))
    repo.commit("strict for a while")
    lost = repo.run().record
    assert lost["status"] == "discard"
    # The baseline moves on (the user edits the top of the artifact) and the rule relaxes.
    repo.write(NOTES, "zero\n" + repo.read(NOTES))
    repo.write_task(default_task(policy__min_improvement=0.5))
    repo.commit("a line on top, relaxed")
    result = repo.run("--apply", lost["run_id"][-6:], command="show", task="")
    assert result.code == 0, result.stderr
    again = result.record
    assert again["run_id"] != lost["run_id"]
    assert again["status"] == "keep", again["reason"]
    assert repo.read(NOTES) == "zero\none\ntwo\nthree\nfour\nmore\nmore\n"
    assert again["ref"] == f"refs/loopengine/demo/{again['run_id']}"


def test_show_apply_without_a_ref_says_why(repo: Repo) -> None:
    repo.write_task(default_task(mutator__command="exit 4"))
    repo.commit("broken mutator")
    rec = repo.run().record
    result = repo.run("--apply", rec["run_id"], command="show", task="")
    assert result.code == 1 and "no saved candidate" in result.stderr


def test_gc_prunes_old_discards_and_crashes_never_a_keep(repo: Repo) -> None:
    kept = [repo.run().record for _ in range(2)]
    assert [r["status"] for r in kept] == ["keep", "keep"]
    repo.write_task(default_task(policy__min_improvement=50.0))
    repo.commit("strict")
    lost = [repo.run().record for _ in range(3)]
    assert {r["status"] for r in lost} == {"discard"}
    result = repo.run("--keep-last", "1", command="gc", task="")
    assert result.code == 0, result.stderr
    listed = repo.git("for-each-ref", "--format=%(refname)", "refs/loopengine/").split()
    assert listed == sorted([r["ref"] for r in kept] + [lost[-1]["ref"]])
    runs = repo.path / "work" / "runs"
    for r in kept + lost[-1:]:
        assert (runs / r["run_id"]).is_dir()
    for r in lost[:-1]:
        assert not (runs / r["run_id"]).exists()
    # Even --keep-last 0 leaves the keeps alone.
    assert repo.run("--keep-last", "0", command="gc", task="").code == 0
    listed = repo.git("for-each-ref", "--format=%(refname)", "refs/loopengine/").split()
    assert listed == sorted(r["ref"] for r in kept)
    assert all((runs / r["run_id"]).is_dir() for r in kept)


def test_a_discarded_big_file_never_reaches_the_users_object_store(repo: Repo,
                                                                   guarded: Any) -> None:
    """Only the ref's objects are promoted into the user's store; the engine's own
    objects live in a sandbox-private store."""
    import hashlib

    data = b"x" * (5 << 20)
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    big = repo.path.parent / "big.bin"
    big.write_bytes(data)
    repo.write_task(default_task(
        mutator__command=f"{PY} {BIN}/mutate.py append notes.md more copy {big} dump.md"))
    repo.commit("a mutator that leaves a big file")
    rec = guarded().record
    assert rec["status"] == "discard" and rec["ref"]
    assert repo.git("ls-tree", "-r", "--name-only", rec["ref"]).split().count(
        "tasks/demo/dump.md") == 0
    assert not subprocess_ok(repo, blob)


def subprocess_ok(repo: Repo, sha: str) -> bool:
    import subprocess

    return subprocess.run(["git", "cat-file", "-e", sha], cwd=repo.path,
                          capture_output=True).returncode == 0
