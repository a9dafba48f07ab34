"""``loopengine run --patch FILE``: the agent's own diff as the candidate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import Repo, default_task

NOTES = "tasks/demo/notes.md"


def diff(path: str, old_start: int, old: list[str], new: list[str],
         context: tuple[str, ...] | list[str] = (), prefix: bool = True) -> str:
    """A one-hunk unified diff: ``context`` lines, then ``old`` replaced by ``new``."""
    a, b = (f"a/{path}", f"b/{path}") if prefix else (path, path)
    body = [f" {c}" for c in context] + [f"-{o}" for o in old] + [f"+{n}" for n in new]
    old_len, new_len = len(context) + len(old), len(context) + len(new)
    return (f"--- {a}\n+++ {b}\n@@ -{old_start},{old_len} +{old_start},{new_len} @@\n"
            + "\n".join(body) + "\n")


@pytest.fixture
def patch_file(tmp_path: Path):
    def write(text: str | bytes, name: str = "candidate.diff") -> Path:
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return write


def test_a_patch_that_applies_is_scored_and_kept(repo: Repo, guarded, patch_file) -> None:
    patch = patch_file(diff(NOTES, 1, [], ["second", "third"], context=["first"]))
    rec = guarded("--patch", str(patch)).record
    assert (rec["status"], rec["reason"], rec["candidate_score"]) == (
        "keep", "score 3.0 beats baseline 1.0 by 2 (higher is better, min_improvement 0)", 3.0)
    assert repo.read(NOTES) == "first\nsecond\nthird\n"
    assert rec["changed_files"] == [NOTES] and rec["changed_lines"] == 2
    log = (repo.path / "work/runs" / rec["run_id"] / "mutator.log").read_text()
    assert log.startswith(f"$ git apply {patch}\n")
    message = repo.git("log", "-1", "--format=%B")
    assert f"Loopengine-Run: {rec['run_id']}" in message


def test_a_hunk_that_fails_names_file_and_line(repo: Repo, guarded, patch_file) -> None:
    patch = patch_file(diff(NOTES, 1, ["not there"], ["second"]))
    result = guarded("--patch", str(patch))
    rec = result.record
    assert result.code == 1
    assert (rec["status"], rec["crash_kind"]) == ("crash", "mutator")
    assert rec["reason"] == f"the patch {patch} does not apply: patch failed: {NOTES}:1"
    assert "while searching for:\nnot there\n" in rec["log_tail"]
    assert rec["candidate_score"] is None and rec["patch"] is None
    assert not (repo.path / "work/runs" / rec["run_id"] / "runner.log").exists()


def test_the_second_hunk_failing_is_the_one_named(repo: Repo, guarded, patch_file) -> None:
    repo.write(NOTES, "".join(f"line {n}\n" for n in range(1, 21)))
    repo.commit("longer notes")
    patch = patch_file(f"--- a/{NOTES}\n+++ b/{NOTES}\n"
                       "@@ -1,3 +1,3 @@\n line 1\n-line 2\n+line two\n line 3\n"
                       "@@ -14,3 +14,3 @@\n line 14\n-line fifteen\n+line 15!\n line 16\n")
    rec = guarded("--patch", str(patch)).record
    assert rec["reason"] == f"the patch {patch} does not apply: patch failed: {NOTES}:14"
    assert repo.read(NOTES).startswith("line 1\nline 2\n")


@pytest.mark.parametrize(("text", "why"), [
    ("this is not a diff\n", "No valid patches in input"),
    (diff("notes.md", 1, [], ["x"], context=["first"], prefix=False),
     "notes.md: No such file or directory (paths are relative to the repository root, "
     "with a/ and b/ prefixes, as git diff writes them)"),
    (diff("../outside.md", 0, [], ["x"]), "invalid path '../outside.md'"),
    ("--- /dev/null\n+++ b/tasks/demo/notes.md\n@@ -0,0 +1 @@\n+x\n",
     "tasks/demo/notes.md: already exists in working directory"),
])
def test_a_patch_git_apply_refuses_is_a_mutator_crash(repo: Repo, guarded, patch_file,
                                                      text: str, why: str) -> None:
    patch = patch_file(text)
    rec = guarded("--patch", str(patch)).record
    assert (rec["status"], rec["crash_kind"]) == ("crash", "mutator")
    assert rec["reason"] == f"the patch {patch} does not apply: {why}"
    assert repo.read(NOTES) == "first\n"


def test_a_patch_beyond_a_symlink_is_refused(repo: Repo, guarded, patch_file,
                                              tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo.path / "tasks/demo/link").symlink_to(outside)
    repo.commit("a link")
    patch = patch_file("--- /dev/null\n+++ b/tasks/demo/link/evil.md\n@@ -0,0 +1 @@\n+x\n")
    rec = guarded("--patch", str(patch)).record
    assert rec["crash_kind"] == "mutator"
    assert "beyond a symbolic link" in rec["reason"]
    assert list(outside.iterdir()) == []


def test_a_patch_touching_a_non_artifact_is_a_discard(repo: Repo, guarded, patch_file) -> None:
    patch = patch_file(diff("README.md", 1, ["a project"], ["a better project"]))
    result = guarded("--patch", str(patch))
    rec = result.record
    assert (result.code, rec["status"]) == (0, "discard")
    assert rec["violations"] == [{"rule": "not_an_artifact", "path": "README.md",
                                  "limit": [NOTES], "actual": "README.md"}]
    assert rec["reason"] == "README.md changed but is not an artifact (artifacts.include)"
    assert rec["candidate_score"] is None  # the runner never ran
    assert repo.read("README.md") == "a project\n"


def test_a_new_file_and_an_oversized_change_are_discards(repo: Repo, guarded,
                                                         patch_file) -> None:
    new = patch_file("--- /dev/null\n+++ b/tasks/demo/extra.md\n@@ -0,0 +1 @@\n+x\n", "new.diff")
    rec = guarded("--patch", str(new)).record
    assert [v["rule"] for v in rec["violations"]] == ["not_an_artifact"]
    big = patch_file(diff(NOTES, 1, [], [f"l{n}" for n in range(11)], context=["first"]),
                     "big.diff")
    rec = guarded("--patch", str(big)).record
    assert rec["violations"] == [{"rule": "max_changed_lines", "path": None, "limit": 10,
                                  "actual": 11}]


def test_deleting_the_artifact_is_a_discard(repo: Repo, guarded, patch_file) -> None:
    patch = patch_file(f"--- a/{NOTES}\n+++ /dev/null\n@@ -1 +0,0 @@\n-first\n")
    rec = guarded("--patch", str(patch)).record
    assert rec["status"] == "discard"
    assert rec["violations"][0]["rule"] == "deleted_artifact"
    assert repo.read(NOTES) == "first\n"


def test_a_binary_patch_is_a_discard(repo: Repo, guarded, tmp_path: Path) -> None:
    scratch = Repo(tmp_path / "scratch")
    scratch.write(NOTES, "first\n")
    scratch.commit()
    scratch.write(NOTES, b"first\n\x00\x01binary\n")
    patch = tmp_path / "binary.diff"
    patch.write_bytes(subprocess.run(["git", "diff", "--binary"], cwd=scratch.path,
                                     capture_output=True, check=True).stdout)
    rec = guarded("--patch", str(patch)).record
    assert rec["status"] == "discard"
    assert [v["rule"] for v in rec["violations"]] == ["binary_change"]


def test_the_patch_applies_byte_for_byte_whatever_the_users_config(repo: Repo, guarded,
                                                                    patch_file) -> None:
    home_config = Path(repo.path.parent / "home" / ".gitconfig")
    home_config.write_text("[apply]\n\twhitespace = error\n\tignoreWhitespace = change\n")
    patch = patch_file(diff(NOTES, 1, [], ["trailing  ", "crlf\r"], context=["first"]))
    rec = guarded("--patch", str(patch)).record
    assert rec["status"] == "keep", rec
    assert (repo.path / NOTES).read_bytes() == b"first\ntrailing  \ncrlf\r\n"


def test_a_patch_against_uncommitted_edits_applies(repo: Repo, guarded, patch_file) -> None:
    repo.write(NOTES, "first\nmine, not committed\n")
    patch = patch_file(diff(NOTES, 2, [], ["yours"], context=["mine, not committed"]))
    rec = guarded("--patch", str(patch)).record
    assert rec["status"] == "keep"
    assert repo.read(NOTES) == "first\nmine, not committed\nyours\n"


def test_the_patch_path_is_relative_to_the_current_directory(repo: Repo, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "p.diff").write_text(diff(NOTES, 1, [], ["second"], context=["first"]))
    proc = subprocess.run(
        [__import__("sys").executable, "-m", "loopengine", "run", "--task",
         str(repo.path / "tasks/demo/task.yaml"), "--repo", str(repo.path), "--patch",
         "p.diff"], cwd=elsewhere, capture_output=True, text=True, check=False)
    assert json.loads(proc.stdout)["status"] == "keep", proc.stderr
    assert repo.read(NOTES) == "first\nsecond\n"


def test_a_missing_patch_file_is_a_usage_error(repo: Repo) -> None:
    result = repo.run("--patch", "no-such.diff")
    assert result.code == 2
    assert result.stdout == ""
    assert "no-such.diff" in result.stderr


def test_a_patch_in_a_folder_without_git(tmp_path: Path, patch_file) -> None:
    plain = Repo(tmp_path / "plain", git=False)
    plain.write(NOTES, "first\n")
    plain.write_task(default_task())
    patch = patch_file(diff(NOTES, 1, [], ["second"], context=["first"]))
    rec = json.loads(plain.run("--patch", str(patch)).stdout)
    assert (rec["status"], rec["sandbox"]) == ("keep", "copy")
    assert plain.read(NOTES) == "first\nsecond\n"


def test_a_kept_candidate_round_trips_through_show(repo: Repo, guarded, patch_file) -> None:
    """The agent's loop: propose, keep, then hand the same change in again elsewhere."""
    patch = patch_file(diff(NOTES, 1, [], ["second"], context=["first"]))
    rec = guarded("--patch", str(patch)).record
    saved = (repo.path / rec["patch"]).read_bytes()
    repo.git("reset", "-q", "--hard", "HEAD~1")
    proc = subprocess.run(["git", "apply", "--check", "-"], cwd=repo.path, input=saved,
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
