"""Issue 3, points 3 and 4: validation that cannot be fooled, and score what you commit.

Each attack is a mutator that tries to hide a change from the validation or to slip a
file past it; each must end in a ``discard`` naming the file, or a keep of exactly the
artifact.  The engine reads the candidate from fresh temporary indexes of its own, so
nothing the mutator does to the sandbox's (private) git state can hide anything.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, PY, Repo, default_task
from hardening_checks import all_dead, checked

from loopengine import git, sync
from loopengine.diff import FileChange

NOTES = "tasks/demo/notes.md"
G = "git -c user.name=M -c user.email=m@example.com"
APPEND = f"{PY} {BIN}/append_line.py notes.md more"

# name -> (mutator command, run in tasks/demo; the path the discard must name)
ATTACKS = {
    "assume-unchanged": (f"git update-index --assume-unchanged ../../README.md && "
                         f"echo hidden >> ../../README.md && {APPEND}", "README.md"),
    "skip-worktree": (f"git update-index --skip-worktree ../../README.md && "
                      f"echo hidden >> ../../README.md && {APPEND}", "README.md"),
    "info/exclude": ("mkdir -p ../../.git/info && echo secret.md >> ../../.git/info/exclude && "
                     f"echo x > secret.md && {APPEND}", "tasks/demo/secret.md"),
    "a .gitignore of its own": ("printf '*\\n' > .gitignore && echo x > secret.md && "
                                f"{APPEND}", "tasks/demo/.gitignore"),
    "a commit inside the sandbox": (f"echo hidden >> ../../README.md && {APPEND} && "
                                    f"git add -A && {G} commit -qm hide", "README.md"),
    "a commit and a reset": (f"echo hidden >> ../../README.md && git add -A && "
                             f"{G} commit -qm hide && {APPEND}", "README.md"),
    "a nested repository": (f"git init -q nested && echo x > nested/x.md && "
                            f"git -C nested add x.md && {G} -C nested commit -qm n && {APPEND}",
                            "tasks/demo/nested"),
    "a nested repository without a commit": ("git init -q nested && echo x > nested/x.md && "
                                             f"{APPEND}", "tasks/demo/nested"),
    "a .git file pointing elsewhere": ("mkdir sub && echo 'gitdir: ../../../.git' > sub/.git && "
                                       f"echo x > sub/x.md && {APPEND}", "tasks/demo/sub"),
    "a symlinked artifact": ("rm notes.md && ln -s ../../README.md notes.md", NOTES),
    "a symlinked parent directory": (f"{APPEND} && cd .. && mv demo real && ln -s real demo",
                                     NOTES),
    "a name with a newline": (f"echo x > 'we\nird é.txt' && {APPEND}", "tasks/demo/we\nird é.txt"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_on_the_validation_is_a_discard_naming_the_file(
        repo: Repo, guarded, attack: str, tmp_path: Path) -> None:
    command, path = ATTACKS[attack]
    marker = tmp_path / "runner-ran"
    repo.write_task(default_task(mutator__command=command,
                                 runner__command=f"touch {shlex.quote(str(marker))}"))
    repo.commit("task")
    rec = checked(repo, guarded())
    assert rec["status"] == "discard", rec
    assert path in [v["path"] for v in rec["violations"]], rec["violations"]
    assert not marker.exists()  # the runner never ran
    assert repo.read(NOTES) == "first\n"


def test_a_new_artifact_with_spaces_unicode_and_a_newline_in_its_name_is_kept_exactly(
        repo: Repo, guarded) -> None:
    name = "new\nnote é ü.md"
    repo.write_task(default_task(artifacts__include=["*.md"],
                                 mutator__command=f"printf 'hello\\n' > {shlex.quote(name)}",
                                 # The score counts the .md files: the new one is better.
                                 scorer__command=f"{PY} -c \"import glob, json; print("
                                 "json.dumps({'score': len(glob.glob('*.md'))}))\""))
    repo.commit("task")
    rec = checked(repo, guarded())
    assert rec["status"] == "keep", rec
    assert rec["changed_files"] == [f"tasks/demo/{name}"]
    files = repo.git("diff-tree", "--no-commit-id", "--name-only", "-r", "-z", rec["commit"])
    assert files.split("\0")[:-1] == [f"tasks/demo/{name}"]
    assert (repo.path / "tasks" / "demo" / name).read_text() == "hello\n"


def test_a_symlinked_parent_directory_in_the_main_tree_is_never_written_through(
        repo: Repo, tmp_path: Path) -> None:
    # While the runner runs, the main tree's tasks/demo/sub becomes a link to a folder
    # with the same notes: the content check passes, the keep must refuse the link.
    repo.write("tasks/demo/sub/notes.md", "first\n")
    repo.write_task(default_task(isolation={"mode": "none"},
        artifacts__include=["sub/notes.md"],
        mutator__command=f"{PY} {BIN}/append_line.py sub/notes.md more",
        runner__command=f"cd {shlex.quote(str(repo.path / 'tasks/demo'))} && "
                        "mv sub elsewhere && ln -s elsewhere sub",
        scorer__command=f"{PY} {BIN}/score_lines.py sub/notes.md"))
    head = repo.commit("task")
    rec = checked(repo, repo.run())
    assert rec["status"] == "crash" and rec["crash_kind"] == "sandbox", rec
    assert "is a symbolic link in the main tree" in rec["reason"]
    assert repo.read("tasks/demo/elsewhere/notes.md") == "first\n"
    assert repo.git("rev-parse", "HEAD").strip() == head


def test_what_the_mutator_leaves_in_the_runtime_folders_never_reaches_the_runner(
        repo: Repo, guarded, tmp_path: Path) -> None:
    # A planted .venv/bin/python and a prepared work/ file would fool a runner that trusts
    # them; neither is validated, so neither survives the mutator.
    seen = tmp_path / "seen"
    repo.write_task(default_task(isolation={"write": [str(tmp_path)]},
        mutator__command=f"mkdir -p ../../.venv/bin ../../work && echo fake > "
                         f"../../.venv/bin/python && echo 99 > ../../work/score && {APPEND}",
        runner__command=f"ls -a ../../work ../../.venv > {shlex.quote(str(seen))} 2>&1; true"))
    repo.commit("task")
    rec = checked(repo, guarded())
    assert rec["status"] == "keep"
    listing = seen.read_text()
    assert "score" not in listing and "No such file" in listing


# -- point 4: score what you commit ---------------------------------------------------------


def test_a_process_the_mutator_left_behind_never_edits_the_candidate(
        repo: Repo, guarded, tmp_path: Path) -> None:
    pidfile = tmp_path / "late.pid"
    late = (f"setsid sh -c 'echo $$ > {pidfile}; sleep 0.4; echo late >> notes.md' "
            "</dev/null >/dev/null 2>&1 &")
    repo.write_task(default_task(isolation={"mode": "none"},
        mutator__command=f"{late} {APPEND}; while [ ! -s {pidfile} ]; do sleep 0.01; done",
        runner__command="sleep 1"))
    repo.commit("task")
    rec = checked(repo, guarded())
    assert rec["status"] == "keep", rec["reason"]
    assert repo.read(NOTES) == "first\nmore\n"
    assert repo.git("show", f"HEAD:{NOTES}") == "first\nmore\n"
    assert all_dead([int(pidfile.read_text())])


def test_the_keep_writes_the_frozen_blob_not_the_file(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    sandbox_file = repo.write("notes.md", "what the sandbox holds now\n")
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo.path,
                          input=b"what was validated\n", capture_output=True,
                          check=True).stdout.decode().strip()
    main = tmp_path / "main"
    main.mkdir()
    change = FileChange("notes.md", "M", "100644", "100644", "0" * 40, blob, 1, 1, False)
    sync.write_files(main, git.Context(repo.path), [change])
    assert (main / "notes.md").read_text() == "what was validated\n"
    assert sandbox_file.read_text() == "what the sandbox holds now\n"
    assert oct(os.stat(main / "notes.md").st_mode & 0o111) == "0o0"
