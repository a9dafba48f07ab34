"""Issue 3, point 1: nothing a step does through git reaches the main repository.

Steps have a private ``.git``; what they can still do is name the main repository by its
absolute path.  The tripwire around each step sees that, puts it back and makes the step
a crash that names it.  The ``guarded`` fixture then checks refs, HEAD, config, hooks and
``info/`` are exactly as before.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, Repo
from conftest import default_task as conftest_task
from hardening_checks import checked as check_record

from loopengine import git, tripwire

IDENT = "-c user.name=Evil -c user.email=evil@example.com"


def default_task(**overrides: Any) -> dict[str, Any]:
    """The demo task with isolation off: these steps reach the main repository and the
    test's folders on purpose (the scenarios of an unisolated run)."""
    overrides.setdefault("isolation", {"mode": "none"})
    return conftest_task(**overrides)


def attack_script(tmp_path: Path, main: Path, body: str) -> str:
    """A step script that runs ``body`` with MAIN set to the main repository's path."""
    script = tmp_path / "attack.sh"
    script.write_text(f"set -e\nMAIN={shlex.quote(str(main))}\n{body}\n")
    return f"sh {script}"


def test_a_step_that_reaches_the_main_git_by_absolute_path_is_put_back(
        repo: Repo, guarded, tmp_path: Path) -> None:
    first = repo.git("rev-parse", "HEAD").strip()
    repo.write("README.md", "second\n")
    repo.commit("second")
    repo.git("branch", "side")
    repo.git("branch", "gone")
    pwned = tmp_path / "pwned"
    body = f"""
git -C "$MAIN" branch evil
git -C "$MAIN" tag evil-tag
git -C "$MAIN" update-ref refs/heads/side {first}
git -C "$MAIN" branch -D gone
git -C "$MAIN" stash store -m planted HEAD
mkdir -p "$MAIN/.git/hooks"
printf '#!/bin/sh\\ntouch {pwned}\\n' > "$MAIN/.git/hooks/post-checkout"
chmod +x "$MAIN/.git/hooks/post-checkout"
mkdir -p "$MAIN/.git/info"
echo notes.md >> "$MAIN/.git/info/exclude"
echo 'nonsense' > "$MAIN/.git/refs/heads/broken"
git -C "$MAIN" {IDENT} commit -q --allow-empty -m 'sneaked onto the branch'
# Last: a planted fsmonitor runs in every later git call on the main tree.
git -C "$MAIN" config alias.st "!touch {pwned}"
git -C "$MAIN" config core.fsmonitor "touch {pwned}"
{PY} -c "open('notes.md', 'a').write('more\\n')"
"""
    repo.write_task(default_task(isolation={"mode": "none"},
                                 mutator__command=attack_script(tmp_path, repo.path, body)))
    repo.commit("task")
    head = repo.git("rev-parse", "HEAD").strip()
    rec = check_record(repo, guarded())  # refs, HEAD, config, hooks, info/: all as before

    assert rec["status"] == "crash" and rec["crash_kind"] == "mutator", rec
    assert rec["reason"].startswith("the mutator changed the main repository's git state, "
                                    "which was put back: ")
    for what in ("refs/heads/evil created", "refs/tags/evil-tag created",
                 "refs/heads/side moved from", "refs/heads/gone deleted",
                 "refs/stash created", "refs/heads/broken created (a broken ref)",
                 f"refs/heads/main moved from {head[:12]}", ".git/config changed",
                 ".git/hooks created", ".git/hooks/post-checkout created",
                 ".git/info/exclude created"):
        assert what in rec["reason"], (what, rec["reason"])
    assert repo.git("rev-parse", "HEAD").strip() == head
    assert repo.git("stash", "list") == ""
    # The planted hook, fsmonitor and alias never run in the main tree.
    repo.git("status")
    repo.git("checkout", "-q", "side")
    assert not pwned.exists()
    assert repo.read("tasks/demo/notes.md") == "first\n"


def test_a_runner_commit_on_the_current_branch_is_put_back(repo: Repo, guarded,
                                                          tmp_path: Path) -> None:
    # The step's reflog entry carries its marker: not the user's own commit.
    body = f'git -C "$MAIN" {IDENT} commit -q --allow-empty -m "made by the runner"'
    repo.write_task(default_task(isolation={"mode": "none"},
                                 runner__command=attack_script(tmp_path, repo.path, body)))
    head = repo.commit("task")
    rec = check_record(repo, guarded())
    assert rec["status"] == "crash" and rec["crash_kind"] == "runner"
    assert f"refs/heads/main moved from {head[:12]}" in rec["reason"]
    assert repo.git("rev-parse", "HEAD").strip() == head
    assert repo.log()[0] == "task"


def test_changing_head_and_writing_refs_as_files_is_put_back(repo: Repo, guarded,
                                                            tmp_path: Path) -> None:
    repo.git("branch", "other")
    head = repo.git("rev-parse", "HEAD").strip()
    body = (f'git -C "$MAIN" symbolic-ref HEAD refs/heads/other\n'
            f'echo {head} > "$MAIN/.git/refs/tags/raw"\n'
            f'cp "$MAIN/.git/config" "$MAIN/.git/config.worktree"')
    repo.write_task(default_task(isolation={"mode": "none"},
                                 scorer__command=attack_script(tmp_path, repo.path, body)))
    repo.commit("task")
    rec = check_record(repo, guarded())
    assert rec["status"] == "crash" and rec["crash_kind"] == "scorer"
    for what in (".git/HEAD changed", "refs/tags/raw created", ".git/config.worktree created"):
        assert what in rec["reason"]
    assert repo.git("symbolic-ref", "HEAD").strip() == "refs/heads/main"


# -- the tripwire on its own: no false alarms, exact repair -------------------------------


@pytest.fixture
def wire(repo: Repo) -> tuple[tripwire.Tripwire, git.RepoInfo]:
    info = git.repo_info(repo.path)
    return tripwire.Tripwire(info, "RUN"), info


def as_step(repo: Repo, *args: str) -> None:
    """A git command as a step runs it: with the step's reflog marker."""
    subprocess.run(["git", "-c", "user.name=S", "-c", "user.email=s@example.com", *args],
                   cwd=repo.path, check=True, capture_output=True,
                   env={**os.environ, **tripwire.step_env("RUN")})


def test_the_users_own_commit_and_pack_refs_are_no_alarm(repo: Repo, wire) -> None:
    watch, _ = wire
    repo.git("tag", "v1")
    before = watch.take()
    repo.write("README.md", "the user's edit\n")
    commit = repo.commit("the user's commit while a step runs")
    repo.git("pack-refs", "--all")
    assert watch.restore(before) == []
    assert repo.git("rev-parse", "HEAD").strip() == commit


def test_a_commit_on_a_detached_head(repo: Repo, wire) -> None:
    watch, _ = wire
    repo.git("checkout", "-q", "--detach")
    before = watch.take()
    repo.write("README.md", "detached edit\n")
    users = repo.commit("the user's, detached")
    assert watch.restore(before) == []
    assert repo.git("rev-parse", "HEAD").strip() == users
    before = watch.take()
    as_step(repo, "commit", "-q", "--allow-empty", "-m", "a step's, detached")
    assert watch.restore(before) == [".git/HEAD changed"]
    assert repo.git("rev-parse", "HEAD").strip() == users


def test_a_pushed_stash_is_dropped_and_the_stash_list_is_exact(repo: Repo, wire) -> None:
    watch, _ = wire
    repo.write("README.md", "the user's stash\n")
    repo.git("stash")
    listed = repo.git("stash", "list")
    before = watch.take()
    as_step(repo, "stash", "store", "-m", "planted", "HEAD")
    changes = watch.restore(before)
    assert len(changes) == 1 and changes[0].startswith("refs/stash moved from ")
    assert repo.git("stash", "list") == listed


def test_a_damaged_packed_refs_file_is_put_back(repo: Repo, wire) -> None:
    watch, _ = wire
    repo.git("pack-refs", "--all")
    packed = repo.path / ".git" / "packed-refs"
    good = packed.read_bytes()
    before = watch.take()
    packed.write_text("this is not a packed-refs file\n")
    watch.restore(before)
    assert packed.read_bytes() == good
    assert repo.git("rev-parse", "main").strip()


def test_a_hooks_path_outside_the_repository_is_watched(repo: Repo, tmp_path: Path) -> None:
    hooks = tmp_path / "my-hooks"
    hooks.mkdir()
    repo.git("config", "core.hooksPath", str(hooks))
    watch = tripwire.Tripwire(git.repo_info(repo.path), "RUN")
    before = watch.take()
    (hooks / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    assert watch.restore(before) == [f"{hooks}/pre-commit created"]
    assert list(hooks.iterdir()) == []


def test_a_run_never_puts_back_what_another_run_repaired(repo: Repo) -> None:
    # Run A's step plants a hook and a tag; run B's step starts after that and ends after
    # A has repaired them: B must not "restore" them, and its step is suspect too.
    info = git.repo_info(repo.path)
    a, b = tripwire.Tripwire(info, "A"), tripwire.Tripwire(info, "B")
    hooks = repo.path / ".git" / "hooks"
    a_before = a.take()
    hooks.mkdir(exist_ok=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\necho planted\n")
    repo.git("tag", "planted")
    b_before = b.take()
    a_changes = a.restore(a_before)
    assert any(c.startswith("refs/tags/planted created at ") for c in a_changes)
    assert ".git/hooks/pre-commit created" in a_changes
    b_changes = b.restore(b_before)
    assert not (hooks / "pre-commit").exists()
    assert repo.git("tag") == ""
    assert "refs/tags/planted (put back by run A, while this step ran)" in b_changes
    assert all("put back by run A" in c for c in b_changes), b_changes


def test_a_step_that_tampers_and_then_times_out_is_still_put_back(repo: Repo, guarded,
                                                                 tmp_path: Path) -> None:
    body = 'git -C "$MAIN" tag left-behind\nexec sleep 60'
    repo.write_task(default_task(isolation={"mode": "none"},
                                 runner__command=attack_script(tmp_path, repo.path, body),
                                 runner__timeout_seconds=1))
    repo.commit("task")
    rec = check_record(repo, guarded())
    assert rec["status"] == "crash" and rec["crash_kind"] == "runner"
    assert "refs/tags/left-behind created" in rec["reason"]
    assert repo.git("tag") == ""


def test_the_users_first_commit_on_an_unborn_branch_is_no_alarm(tmp_path: Path) -> None:
    r = Repo(tmp_path / "fresh")
    watch = tripwire.Tripwire(git.repo_info(r.path), "RUN")
    before = watch.take()
    r.write("a.txt", "a\n")
    first = r.commit("the user's first commit")
    assert watch.restore(before) == []
    assert r.git("rev-parse", "HEAD").strip() == first
