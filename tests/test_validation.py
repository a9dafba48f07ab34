"""Validation (contract section 3 step 5): every rule is a discard before the runner runs.

The runner of every task here touches a marker file outside the repository, so "the
runner never ran" is a fact on disk, not an assumption.  The mutator is
``tests/bin/mutate.py``, run at the repository root.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, assert_guarantees, default_task, snapshot

NOTES = "tasks/demo/notes.md"


def mutator(*actions: str) -> str:
    return f"{PY} {BIN}/mutate.py {shlex.join(actions)}"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "runner-ran"


def use_task(repo: Repo, marker: Path, *actions: str, **overrides: Any) -> None:
    """Commit a task whose mutator does ``actions`` and whose runner touches ``marker``."""
    settings: dict[str, Any] = {
        "mutator__command": mutator(*actions),
        "mutator__cwd": ".",
        "runner__command": f"touch {shlex.quote(str(marker))}",
        "isolation": {"write": [str(marker.parent)]},  # the marker reaches the test
    }
    settings.update(overrides)
    repo.write_task(default_task(**settings))
    repo.commit("task")


def assert_discarded_before_runner(
    rec: dict[str, Any], code: int, marker: Path, violations: list[dict[str, Any]]
) -> None:
    assert code == 0
    assert rec["status"] == "discard"
    assert rec["violations"] == violations
    assert rec["reason"]
    assert rec["candidate_score"] is None
    assert rec["commit"] is None
    assert rec["crash_kind"] is None
    assert not marker.exists(), "the runner ran for a candidate that broke a rule"


def apply_patch(repo: Repo, rec: dict[str, Any], *flags: str) -> None:
    """``git apply`` the run's candidate.patch at the repository root."""
    assert rec["patch"] == f"work/runs/{rec['run_id']}/candidate.patch"
    patch = repo.path / rec["patch"]
    assert patch.is_file()
    repo.git("apply", *flags, str(patch))


# ---------------------------------------------------------------------------
# The budget: files and lines


def test_too_many_files(repo: Repo, guarded, marker: Path) -> None:
    repo.write("tasks/demo/other.md", "x\n")
    use_task(repo, marker, "append", "tasks/demo/other.md", "y", "append", NOTES, "more",
             artifacts__include=["*.md"])
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "max_files_per_iteration", "path": None, "limit": 1, "actual": 2},
    ])
    assert rec["changed_files"] == [NOTES, "tasks/demo/other.md"]
    assert rec["changed_lines"] == 2
    assert rec["diff_summary"] == "2 files changed, 2 insertions(+), 0 deletions(-)"
    assert rec["reason"] == "2 files changed, more than artifacts.max_files_per_iteration = 1"
    assert repo.read(NOTES) == "first\n"


def test_too_many_lines_counts_insertions_and_deletions(
    repo: Repo, guarded, marker: Path
) -> None:
    use_task(repo, marker, "write", NOTES, "one\\ntwo\\nthree\\n",
             mutation__max_changed_lines=3)
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "max_changed_lines", "path": None, "limit": 3, "actual": 4},
    ])
    assert rec["changed_lines"] == 4
    assert rec["diff_summary"] == "1 file changed, 3 insertions(+), 1 deletion(-)"
    assert rec["reason"] == "4 lines changed, more than mutation.max_changed_lines = 3"
    # The saved patch is the candidate: applied to the untouched main tree, it gives it.
    assert repo.read(NOTES) == "first\n"
    apply_patch(repo, rec)
    assert repo.read(NOTES) == "one\ntwo\nthree\n"


def test_exactly_the_line_limit_is_allowed(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "append", NOTES, "a", "append", NOTES, "b", "append", NOTES, "c",
             mutation__max_changed_lines=3)
    rec = guarded().record
    assert rec["status"] == "keep"
    assert rec["violations"] == []
    assert rec["changed_lines"] == 3
    assert rec["diff_summary"] == "1 file changed, 3 insertions(+), 0 deletions(-)"
    assert marker.exists()
    # On a keep the patch leads from the parent to the commit: reversed, it undoes it.
    apply_patch(repo, rec, "--reverse")
    assert repo.read(NOTES) == "first\n"


def test_disallowed_file_type(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "write", "tasks/demo/notes.txt", "text\\n",
             artifacts__include=["notes.*"])
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "allowed_file_types", "path": "tasks/demo/notes.txt", "limit": [".md"],
         "actual": ".txt"},
    ])
    assert rec["changed_files"] == ["tasks/demo/notes.txt"]
    assert rec["diff_summary"] == "1 file changed, 1 insertion(+), 0 deletions(-)"
    assert not (repo.path / "tasks/demo/notes.txt").exists()


# ---------------------------------------------------------------------------
# Only artifacts may change


@pytest.mark.parametrize(
    ("actions", "path", "summary"),
    [
        (("append", "README.md", "more"), "README.md",
         "1 file changed, 1 insertion(+), 0 deletions(-)"),
        (("write", "tasks/demo/scratch.md", "x\\n"), "tasks/demo/scratch.md",
         "1 file changed, 1 insertion(+), 0 deletions(-)"),
        # .gitignore does not hide a change from the validation.
        (("write", "debug.log", "x\\n"), "debug.log",
         "1 file changed, 1 insertion(+), 0 deletions(-)"),
        (("rm", "README.md"), "README.md", "1 file changed, 0 insertions(+), 1 deletion(-)"),
    ],
    ids=["modified-tracked", "new-untracked", "new-ignored", "deleted"],
)
def test_non_artifact_change(
    repo: Repo, guarded, marker: Path, actions: tuple[str, ...], path: str, summary: str
) -> None:
    repo.write(".gitignore", "/work/\n*.log\n")
    use_task(repo, marker, *actions, "append", NOTES, "more", artifacts__max_files_per_iteration=5)
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "not_an_artifact", "path": path, "limit": [NOTES], "actual": path},
    ])
    assert rec["changed_files"] == sorted([path, NOTES])
    assert rec["reason"].startswith(f"{path} changed but is not an artifact")
    assert repo.read(NOTES) == "first\n"
    assert repo.read("README.md") == "a project\n"
    assert not (repo.path / "debug.log").exists()
    assert repo.git("status", "--porcelain", "--ignored", "--", ":!work") == ""


def test_deleting_an_artifact(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "rm", NOTES)
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "deleted_artifact", "path": NOTES, "limit": "artifacts may not be deleted",
         "actual": "deleted"},
    ])
    assert rec["diff_summary"] == "1 file changed, 0 insertions(+), 1 deletion(-)"
    assert repo.read(NOTES) == "first\n"
    apply_patch(repo, rec)
    assert not (repo.path / NOTES).exists()


def test_binary_change(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "binary", NOTES)
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "binary_change", "path": NOTES, "limit": "text changes only",
         "actual": "binary"},
    ])
    # git counts no lines for a binary change; the rule catches it anyway.
    assert rec["changed_lines"] == 0
    assert rec["diff_summary"] == "1 file changed, 0 insertions(+), 0 deletions(-)"
    apply_patch(repo, rec)
    assert (repo.path / NOTES).read_bytes() == b"\x00\x01\x02binary\xff\n"


def test_mode_only_change(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "chmod", NOTES, "755")
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "mode_change", "path": NOTES, "limit": "100644", "actual": "100755"},
    ])
    assert rec["changed_files"] == [NOTES]
    assert rec["changed_lines"] == 0
    assert rec["diff_summary"] == "1 file changed, 0 insertions(+), 0 deletions(-)"
    assert not (repo.path / NOTES).stat().st_mode & 0o100
    apply_patch(repo, rec)
    assert (repo.path / NOTES).stat().st_mode & 0o100
    assert repo.read(NOTES) == "first\n"


@pytest.mark.parametrize(
    ("src", "dst", "violations"),
    [
        (NOTES, "tasks/demo/notes.txt.bak", [
            {"rule": "deleted_artifact", "path": NOTES, "limit": "artifacts may not be deleted",
             "actual": "deleted"},
            {"rule": "not_an_artifact", "path": "tasks/demo/notes.txt.bak",
             "limit": ["tasks/demo/*.md"], "actual": "tasks/demo/notes.txt.bak"},
        ]),
        ("tasks/demo/draft.txt", "tasks/demo/draft.md", [
            {"rule": "not_an_artifact", "path": "tasks/demo/draft.txt",
             "limit": ["tasks/demo/*.md"], "actual": "tasks/demo/draft.txt"},
        ]),
        # Both paths are artifacts, but the old one is deleted: still a discard.
        (NOTES, "tasks/demo/renamed.md", [
            {"rule": "deleted_artifact", "path": NOTES, "limit": "artifacts may not be deleted",
             "actual": "deleted"},
        ]),
    ],
    ids=["artifact-to-other", "other-to-artifact", "artifact-to-artifact"],
)
def test_rename_is_a_deletion_plus_an_addition(
    repo: Repo, guarded, marker: Path, src: str, dst: str, violations: list[dict[str, Any]]
) -> None:
    repo.write("tasks/demo/draft.txt", "draft\n")
    use_task(repo, marker, "mv", src, dst, artifacts__include=["*.md"],
             artifacts__max_files_per_iteration=2, mutation__allowed_file_types=[])
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, violations)
    assert rec["changed_files"] == sorted([src, dst])
    assert (repo.path / src).exists() and not (repo.path / dst).exists()


@pytest.mark.parametrize(
    ("setup", "actions", "path"),
    [
        (None, ("ln", "notes.md", "tasks/demo/alias.md"), "tasks/demo/alias.md"),
        (None, ("ln", "../../README.md", NOTES), NOTES),
        # The artifact is a link in the main tree; the candidate makes it a file.
        ("link", ("rm", NOTES, "write", NOTES, "text\\n"), NOTES),
    ],
    ids=["new-link", "file-to-link", "link-to-file"],
)
def test_symbolic_link_artifact(
    repo: Repo, guarded, marker: Path, setup: str | None, actions: tuple[str, ...], path: str
) -> None:
    if setup == "link":
        (repo.path / NOTES).unlink()
        (repo.path / NOTES).symlink_to("../../README.md")
    use_task(repo, marker, *actions, artifacts__include=["*.md"],
             artifacts__max_files_per_iteration=2)
    before = (repo.path / NOTES).is_symlink()
    result = guarded()
    rec = result.record
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "symlink", "path": path, "limit": "regular files only",
         "actual": "symbolic link"},
    ])
    assert (repo.path / NOTES).is_symlink() == before
    assert not (repo.path / "tasks/demo/alias.md").exists()
    assert repo.read("README.md") == "a project\n"


def test_several_violations_are_all_listed(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "append", "README.md", "x", "chmod", NOTES, "755", "append", NOTES,
             "1", "append", NOTES, "2", mutation__max_changed_lines=2)
    result = guarded()
    rec = result.record
    # Per file in path order, then the budget totals.
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "not_an_artifact", "path": "README.md", "limit": [NOTES],
         "actual": "README.md"},
        {"rule": "mode_change", "path": NOTES, "limit": "100644", "actual": "100755"},
        {"rule": "max_files_per_iteration", "path": None, "limit": 1, "actual": 2},
        {"rule": "max_changed_lines", "path": None, "limit": 2, "actual": 3},
    ])
    assert rec["reason"] == ("README.md changed but is not an artifact (artifacts.include) "
                             "(and 3 more violations)")
    assert rec["changed_files"] == ["README.md", NOTES]
    assert rec["diff_summary"] == "2 files changed, 3 insertions(+), 0 deletions(-)"


def test_a_handed_in_patch_is_validated_the_same(
    repo: Repo, guarded, marker: Path, tmp_path: Path
) -> None:
    use_task(repo, marker, "append", NOTES, "unused")
    repo.write("README.md", "a project\nchanged\n")
    patch = tmp_path / "proposal.patch"
    patch.write_text(repo.git("diff"))
    repo.git("checkout", "--", "README.md")
    result = guarded("--patch", str(patch))
    assert_discarded_before_runner(result.record, result.code, marker, [
        {"rule": "not_an_artifact", "path": "README.md", "limit": [NOTES],
         "actual": "README.md"},
    ])


# ---------------------------------------------------------------------------
# What counts as an artifact and as a change


def test_star_glob_accepts_several_files(repo: Repo, guarded, marker: Path) -> None:
    repo.write("tasks/demo/b.md", "b\n")
    use_task(repo, marker, "append", "tasks/demo/b.md", "more", "write", "tasks/demo/a.md",
             "new\\n", "append", NOTES, "more", artifacts__include=["*.md"],
             artifacts__max_files_per_iteration=3)
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    assert marker.exists()
    files = ["tasks/demo/a.md", "tasks/demo/b.md", NOTES]
    assert rec["changed_files"] == files
    assert rec["diff_summary"] == "3 files changed, 3 insertions(+), 0 deletions(-)"
    assert sorted(repo.git("show", "--format=", "--name-only", "HEAD").split()) == files
    assert repo.read("tasks/demo/a.md") == "new\n"


def test_globstar_reaches_into_subfolders(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "write", "tasks/demo/sub/deep/c.md", "c\\n", "append", NOTES, "x",
             artifacts__include=["**/*.md"], artifacts__max_files_per_iteration=2)
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    assert rec["changed_files"] == [NOTES, "tasks/demo/sub/deep/c.md"]
    assert repo.read("tasks/demo/sub/deep/c.md") == "c\n"


def test_star_glob_stays_in_its_folder(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "write", "tasks/demo/sub/c.md", "c\\n",
             artifacts__include=["*.md"])
    result = guarded()
    assert_discarded_before_runner(result.record, result.code, marker, [
        {"rule": "not_an_artifact", "path": "tasks/demo/sub/c.md",
         "limit": ["tasks/demo/*.md"], "actual": "tasks/demo/sub/c.md"},
    ])


def test_runtime_folders_are_not_changes(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "write", "work/scratch.txt", "x\\n", "write", ".venv/junk.txt",
             "x\\n", "write", ".pytest_cache/c.txt", "x\\n", "append", NOTES, "more")
    rec = guarded().record
    assert rec["status"] == "keep", rec["reason"]
    assert rec["changed_files"] == [NOTES]
    assert rec["diff_summary"] == "1 file changed, 1 insertion(+), 0 deletions(-)"
    patch = (repo.path / rec["patch"]).read_text()
    assert "scratch" not in patch and "junk" not in patch
    assert not (repo.path / "work/scratch.txt").exists()
    assert not (repo.path / ".venv").exists()
    assert repo.git("show", "--format=", "--name-only", "HEAD").split() == [NOTES]


def test_only_runtime_changes_is_no_change(repo: Repo, guarded, marker: Path) -> None:
    use_task(repo, marker, "write", "work/scratch.txt", "x\\n")
    first = guarded().record
    assert first["status"] == "discard" and first["reason"] == "candidate has no change"
    assert first["baseline_source"] == "remeasured" and first["baseline_score"] == 1.0
    assert first["changed_files"] == [] and first["diff_summary"] == ""
    assert first["changed_lines"] == 0 and first["patch"] is None and first["commit"] is None
    second = guarded().record
    assert second["status"] == "discard"
    assert second["reason"] == "candidate has no change"


def test_patch_reproduces_a_multi_file_candidate(repo: Repo, guarded, marker: Path,
                                                 tmp_path: Path) -> None:
    repo.write("tasks/demo/b.md", "one\ntwo\nthree\n")
    use_task(repo, marker, "write", "tasks/demo/b.md", "one\\nTWO\\nthree\\nfour\\n",
             "write", "tasks/demo/new.md", "fresh\\n", "append", NOTES, "more",
             artifacts__include=["*.md"], mutation__max_changed_lines=2,
             artifacts__max_files_per_iteration=3)
    rec = guarded().record
    assert rec["status"] == "discard"
    assert rec["violations"] == [
        {"rule": "max_changed_lines", "path": None, "limit": 2, "actual": 5}]
    assert rec["diff_summary"] == "3 files changed, 4 insertions(+), 1 deletion(-)"
    apply_patch(repo, rec)
    assert repo.read("tasks/demo/b.md") == "one\nTWO\nthree\nfour\n"
    assert repo.read("tasks/demo/new.md") == "fresh\n"
    assert repo.read(NOTES) == "first\nmore\n"
    # Nothing else: exactly the three files differ from HEAD.
    status = subprocess.run(["git", "status", "--porcelain", "--", ":!work"],
                            cwd=repo.path, capture_output=True, text=True).stdout
    assert sorted(line[3:] for line in status.splitlines()) == sorted([
        "tasks/demo/b.md", NOTES, "tasks/demo/new.md"])


@pytest.mark.parametrize(
    ("path", "text", "rule"),
    # The artifact's new text has two lines (same size): it scores 2 against the baseline's 1.
    [("README.md", "b project", "not_an_artifact"), (NOTES, "ot\\nhe", None)],
    ids=["non-artifact", "artifact"],
)
def test_a_fast_same_size_edit_is_seen(
    repo: Repo, guarded, marker: Path, path: str, text: str, rule: str | None
) -> None:
    # Same size, in place, within the second of the checkout, mtime put back, under a
    # config that trusts stat data: the old index copy made this change invisible.
    repo.git("config", "core.trustctime", "false")
    repo.git("config", "core.checkStat", "minimal")
    q = shlex.quote(path)
    repo.write_task(default_task(
        mutator__command=f"t=$(stat -c %Y {q}) && printf '{text}\\n' > {q} && "
                         f"touch -d @$t {q} && sleep 1.1",
        mutator__cwd=".", runner__command=f"touch {shlex.quote(str(marker))}"))
    repo.commit("task")
    rec = guarded().record
    assert rec["changed_files"] == [path]
    added = 1 if rule else 2
    assert rec["diff_summary"] == f"1 file changed, {added} insertions(+), 1 deletion(-)" \
        .replace("1 insertions", "1 insertion")
    if rule:
        assert rec["status"] == "discard"
        assert [v["rule"] for v in rec["violations"]] == [rule]
        assert not marker.exists()
    else:
        assert rec["status"] == "keep", rec["reason"]
        assert repo.read(NOTES) == "ot\nhe\n"


def test_a_fast_same_size_edit_is_seen_in_a_copy_sandbox(
    tmp_path: Path, isolated_env: Path, marker: Path
) -> None:
    # The copy keeps no old mtimes that would make git trust a rewritten file's stat data.
    r = Repo(tmp_path / "plain", git=False)
    r.write("README.md", "a project\n")
    r.write(NOTES, "first\n")
    r.write_task(default_task(
        mutator__command="t=$(stat -c %Y README.md) && printf 'b project\\n' > README.md && "
                         "touch -d @$t README.md && sleep 1.1",
        mutator__cwd=".", runner__command=f"touch {shlex.quote(str(marker))}"))
    time.sleep(1.1)  # the files are older than the second the sandbox is made in
    before = snapshot(r, isolated_env)
    result = r.run()
    assert_guarantees(r, before, isolated_env, result.record)
    rec = result.record
    assert rec["sandbox"] == "copy"
    assert_discarded_before_runner(rec, result.code, marker, [
        {"rule": "not_an_artifact", "path": "README.md", "limit": [NOTES],
         "actual": "README.md"},
    ])
