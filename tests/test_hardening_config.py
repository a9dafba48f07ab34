"""Issue 3, point 2: one hardened git wrapper; hostile user configuration changes nothing.

A standard keep and a standard discard run under each hostile setting (in the global
config that the engine's git reads, not in the environment, which the engine drops) and
must give the same records as under a clean configuration.
"""

from __future__ import annotations

import ast
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, default_task
from hardening_checks import checked

import loopengine

# Fields that differ from run to run whatever the configuration.
VOLATILE = {"run_id", "started_at", "duration_seconds", "commit", "patch", "ref"}
NOTES = "tasks/demo/notes.md"
ODD = "tasks/demo/we ird é.txt"  # quoted by core.quotePath=true, unless -z and hardened


def hostile_hooks(tmp_path: Path) -> Path:
    hooks = tmp_path / "failing-hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("pre-commit", "commit-msg", "post-checkout", "post-commit",
                 "reference-transaction", "post-index-change", "pre-auto-gc"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho ran >> {tmp_path}/hook-ran\nexit 1\n")
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hooks


def external_diff(tmp_path: Path) -> Path:
    tool = tmp_path / "ext-diff.sh"
    tool.write_text(f"#!/bin/sh\necho ran >> {tmp_path}/ext-ran\necho garbage\n")
    tool.chmod(0o755)
    return tool


HOSTILE: dict[str, Any] = {
    "diff.noprefix": "true",
    "color.ui": "always",
    "diff.external": external_diff,
    "core.autocrlf=true": ("core.autocrlf", "true"),
    "core.autocrlf=input": ("core.autocrlf", "input"),
    "core.quotePath": "true",
    "diff.renames": "copies",
    "commit.gpgSign": "true",
    "status.showUntrackedFiles": "no",
    "core.fileMode": "false",
    "core.hooksPath": hostile_hooks,
}


LOCAL = {"core.fileMode"}


def write_config(path: Path, tmp_path: Path, case: str | None) -> None:
    lines = ["[user]\n\tname = Hostile\n\temail = hostile@example.com\n"]
    if case is not None:
        value = HOSTILE[case]
        key = case
        if isinstance(value, tuple):
            key, value = value
        if callable(value):
            value = value(tmp_path)
        section, name = key.split(".", 1)
        lines.append(f"[{section}]\n\t{name} = {value}\n")
        if case == "commit.gpgSign":  # a signing program that always fails
            lines.append("[gpg]\n\tprogram = false\n")
    path.write_text("".join(lines))


def keep_and_discard(repo: Repo, tmp_path: Path, case: str | None) -> list[dict[str, Any]]:
    config = tmp_path / f"hostile-{case}.gitconfig"
    write_config(config, tmp_path, case)
    if case in LOCAL:  # `git init` wrote it into the repository's config, which wins
        repo.git("config", case, HOSTILE[case])
    env = {"GIT_CONFIG_GLOBAL": str(config)}
    # The keep: a CRLF line, which core.autocrlf would turn into LF in the commit only.
    repo.write_task(default_task(
        mutator__command=f"{PY} -c \"open('notes.md', 'ab').write(b'more\\r\\n')\""))
    repo.commit("a mutator that writes CRLF")
    records = [checked(repo, repo.run(env=env))]
    # core.autocrlf is the user's (issue 9, point 19): the commit holds what `git add`
    # makes of the file, and the file holds what the user's checkout makes of the commit.
    blob, kept = {"core.autocrlf=true": (b"first\nmore\n", b"first\r\nmore\r\n"),
                  "core.autocrlf=input": (b"first\nmore\n", b"first\nmore\n")}.get(
        case or "", (b"first\nmore\r\n", b"first\nmore\r\n"))
    assert (repo.path / NOTES).read_bytes() == kept
    assert subprocess.run(["git", "cat-file", "blob", f"HEAD:{NOTES}"], cwd=repo.path,
                          capture_output=True, check=True).stdout == blob
    # The discard: a second file with a name core.quotePath would mangle, and a mode
    # change that core.fileMode=false would hide.
    repo.write_task(default_task(mutator__command=(
        f"{PY} {BIN}/mutate.py append notes.md again write 'we ird é.txt' x "
        "chmod ../../README.md 755")))
    repo.commit("a mutator that strays")
    records.append(checked(repo, repo.run(env=env)))
    return records


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


_REFERENCE: list[dict[str, Any]] = []


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_user_config_gives_the_same_records(repo: Repo, tmp_path: Path,
                                                   case: str) -> None:
    if not _REFERENCE:
        clean = Repo(tmp_path / "clean")
        for rel in (".gitignore", NOTES, "README.md", "tasks/demo/task.yaml"):
            clean.write(rel, repo.read(rel))
        clean.commit()
        _REFERENCE.extend(comparable(keep_and_discard(clean, tmp_path, None)))
    records = keep_and_discard(repo, tmp_path, case)
    assert comparable(records) == _REFERENCE
    keep, discard = records
    assert keep["status"] == "keep" and keep["commit"]
    assert discard["status"] == "discard"
    assert [v["path"] for v in discard["violations"]][:2] == ["README.md", ODD]
    assert not (tmp_path / "hook-ran").exists()
    assert not (tmp_path / "ext-ran").exists()
    # The keep commit is unsigned, has one parent and changes the artifact only.
    body = repo.git("cat-file", "commit", keep["commit"])
    assert "gpgsig" not in body
    assert repo.git("diff-tree", "--no-commit-id", "--name-only", "-r", "-z",
                    keep["commit"]).split("\0")[:-1] == [NOTES]


# -- every git call goes through git.run --------------------------------------------------

PACKAGE = Path(loopengine.__file__).parent


def _calls_git_directly(tree: ast.AST) -> list[int]:
    """Lines of subprocess/os calls whose argument list starts with "git"."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.List | ast.Tuple) and first.elts:
            first = first.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str) \
                and first.value.split(" ")[0] == "git":
            found.append(node.lineno)
    return found


def test_every_git_call_goes_through_the_hardened_wrapper() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "git.py":
            continue
        source = path.read_text()
        tree = ast.parse(source)
        offenders += [f"{path.name}:{line}" for line in _calls_git_directly(tree)]
        for node in ast.walk(tree):  # GitPython, if ever used, must come through git.py
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name == "git" or a.name.startswith("git.")]
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "git":
                offenders.append(f"{path.name}: from {node.module} import")
    assert offenders == []


def test_the_wrapper_pins_what_the_issue_asks() -> None:
    from loopengine import git

    flags = set(git.HARDENED_CONFIG)
    for item in ("core.hooksPath=/dev/null", "core.fsmonitor=false", "core.quotePath=false",
                 "color.ui=false", "diff.noprefix=false", "diff.external=", "core.pager=cat",
                 "commit.gpgSign=false", "diff.renames=false",
                 "core.fileMode=true", "add.ignoreErrors=false"):
        assert item in flags
    env = git.clean_env({"GIT_DIR": "/x", "GIT_INDEX_FILE": "/y", "GIT_CONFIG_COUNT": "1",
                         "GIT_CONFIG_KEY_0": "core.pager", "GIT_EXTERNAL_DIFF": "z",
                         "HOME": "/h"})
    assert not any(k in env for k in ("GIT_DIR", "GIT_INDEX_FILE", "GIT_CONFIG_COUNT",
                                      "GIT_CONFIG_KEY_0", "GIT_EXTERNAL_DIFF"))
    assert env["HOME"] == "/h"
