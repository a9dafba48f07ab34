"""Real repositories in tmp_path, real `loopengine run` subprocesses, and the guarantees.

Every test runs with HOME, the global git config and the sandbox root isolated, so no
developer configuration leaks in and leftovers are visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

BIN = Path(__file__).resolve().parent / "bin"
PROJECT = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    for key in list(os.environ):
        if key.startswith("GIT_") or key.startswith("LOOPENGINE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    templates = tmp_path / "git-templates"
    templates.mkdir()
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(templates))
    sandboxes = tmp_path / "sandboxes"
    sandboxes.mkdir()
    monkeypatch.setenv("LOOPENGINE_SANDBOX_ROOT", str(sandboxes))
    yield sandboxes


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def record(self) -> dict[str, Any]:
        lines = self.stdout.splitlines()
        assert len(lines) == 1, f"stdout must be one line, got {self.stdout!r}\n{self.stderr}"
        return json.loads(lines[0])


def default_task(**overrides: Any) -> dict[str, Any]:
    """A task on ``tasks/demo/notes.md``: the mutator appends a line, score = line count."""
    task: dict[str, Any] = {
        "id": "demo",
        "description": "a test task",
        "artifacts": {"include": ["notes.md"], "max_files_per_iteration": 1},
        "mutation": {"max_changed_lines": 10, "allowed_file_types": [".md"]},
        "mutator": {"type": "command", "command": f"{PY} {BIN}/append_line.py notes.md more",
                    "cwd": "tasks/demo", "timeout_seconds": 30},
        "runner": {"command": "true", "cwd": "tasks/demo", "timeout_seconds": 30},
        "scorer": {"type": "command", "command": f"{PY} {BIN}/score_lines.py notes.md",
                   "cwd": "tasks/demo", "timeout_seconds": 30,
                   "parse": {"format": "json", "score_field": "score",
                             "metrics_field": "metrics"}},
        "objective": {"direction": "maximize"},
        "constraints": [],
        "policy": {"min_improvement": 0.0, "keep_when_no_baseline": True,
                   "commit_on_keep": True},
        "budget": {"max_seconds": 120},
        "logging": {"results_path": "work/results.jsonl"},
    }
    for dotted, value in overrides.items():
        keys = dotted.split("__")
        target = task
        for key in keys[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return task


_DELETE = object()
DELETE = _DELETE


class Repo:
    """A real git repository (or a plain folder) under tmp_path."""

    def __init__(self, path: Path, git: bool = True) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        if git:
            self.git("init", "-q", "-b", "main")

    def git(self, *args: str, check: bool = True, input: str | None = None) -> str:
        proc = subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True,
                              check=False, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"git {args} failed: {proc.stderr}")
        return proc.stdout

    def write(self, rel: str, text: str | bytes, mode: int | None = None) -> Path:
        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        if mode is not None:
            path.chmod(mode)
        return path

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def commit(self, message: str = "init") -> str:
        self.git("add", "-A")
        self.git("-c", "user.name=Test", "-c", "user.email=test@example.com",
                 "commit", "-q", "--no-verify", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    def write_task(self, task: dict[str, Any] | None = None, rel: str = "tasks/demo/task.yaml",
                   text: str | None = None) -> str:
        self.write(rel, text if text is not None else yaml.safe_dump(task or default_task()))
        return rel

    def run(self, *args: str, task: str = "tasks/demo/task.yaml", timeout: float = 120,
            env: dict[str, str] | None = None, command: str = "run") -> Result:
        argv = [PY, "-m", "loopengine", command]
        if command == "run" and task:
            argv += ["--task", task]
        argv += list(args)
        proc = subprocess.run(argv, cwd=self.path, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})}, check=False)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def results(self, rel: str = "work/results.jsonl") -> list[dict[str, Any]]:
        path = self.path / rel
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log(self) -> list[str]:
        return self.git("log", "--format=%s").splitlines()


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """A committed repository with the demo task and a one-line artifact."""
    r = Repo(tmp_path / "repo")
    r.write(".gitignore", "/work/\n")
    r.write("tasks/demo/notes.md", "first\n")
    r.write("README.md", "a project\n")
    r.write_task()
    r.commit()
    return r


# ---------------------------------------------------------------------------
# The guarantees of the contract's section 3, "What must hold"


def _hash_tree(root: Path) -> dict[str, str]:
    files = {}
    for folder, dirs, names in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        if rel_folder == ".":
            dirs[:] = [d for d in dirs if d not in (".git", "work")]
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.normpath(os.path.join(rel_folder, name))
            if os.path.islink(path):
                files[rel] = "link:" + os.readlink(path)
            else:
                st = os.stat(path)
                with open(path, "rb") as fh:
                    files[rel] = f"{oct(st.st_mode)}:" + hashlib.sha256(fh.read()).hexdigest()
    return files


def _hash_dir(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    if path.is_dir():
        return _hash_tree(path)
    return {"": hashlib.sha256(path.read_bytes()).hexdigest()}


@dataclass
class State:
    tree: dict[str, str]
    index: str
    refs: str
    head: str
    branch: str
    worktrees: str
    config: dict[str, str]
    hooks: dict[str, str]
    info: dict[str, str]
    sandboxes: list[str]


def snapshot(r: Repo, sandboxes: Path) -> State:
    is_git = (r.path / ".git").exists()
    g = (lambda *a: r.git(*a, check=False)) if is_git else (lambda *a: "")
    git_dir = r.path / ".git"
    return State(
        tree=_hash_tree(r.path),
        index=g("ls-files", "-s", "-z"),
        refs=g("for-each-ref", "--format=%(refname) %(objectname)"),
        head=g("rev-parse", "-q", "--verify", "HEAD").strip(),
        branch=g("symbolic-ref", "-q", "HEAD").strip(),
        worktrees="\n".join(line for line in g("worktree", "list", "--porcelain").splitlines()
                             if not line.startswith("HEAD ")),
        config=_hash_dir(git_dir / "config"),
        hooks=_hash_dir(git_dir / "hooks"),
        info=_hash_dir(git_dir / "info"),
        sandboxes=sorted(os.listdir(sandboxes)),
    )


def assert_guarantees(r: Repo, before: State, sandboxes: Path, record: dict[str, Any],
                      batch: list[dict[str, Any]] | None = None) -> None:
    """Nothing but the kept artifacts and work/ changed; refs moved only by the keep."""
    after = snapshot(r, sandboxes)
    assert after.sandboxes == [], f"sandbox leftovers: {after.sandboxes}"
    assert after.worktrees == before.worktrees
    assert after.config == before.config
    assert after.hooks == before.hooks
    assert after.info == before.info
    assert after.branch == before.branch
    kept = set(record["changed_files"]) if record["status"] == "keep" else set()
    changed = {p for p in set(before.tree) | set(after.tree)
               if before.tree.get(p) != after.tree.get(p)}
    assert changed <= kept, f"files changed outside the kept artifacts: {changed - kept}"
    if record.get("commit"):
        assert after.head == record["commit"]
        parent = r.git("rev-parse", f"{record['commit']}^", check=False).strip()
        if before.head:
            assert parent == before.head
        # -z: paths with spaces or non-ASCII letters come unquoted and whole.
        files = [f for f in r.git("show", "--format=", "--name-only", "-z",
                                  record["commit"]).split("\0") if f]
        assert sorted(files) == sorted(record["changed_files"])
        assert _refs_without(after.refs, before.branch) == _refs_without(before.refs,
                                                                          before.branch)
        _assert_own_candidate_ref(after.refs, before.refs, batch or [record])
        index_before = _index_without(before.index, kept)
        index_after = _index_without(after.index, kept)
        assert index_after == index_before
    else:
        assert after.head == before.head
        assert _refs_without(after.refs, "") == _refs_without(before.refs, "")
        _assert_own_candidate_ref(after.refs, before.refs, batch or [record])
        assert after.index == before.index


def _refs_without(refs: str, branch: str) -> list[str]:
    """The refs but the branch and the candidate refs (refs/loopengine/, section 11)."""
    return [line for line in refs.splitlines()
            if (not branch or not line.startswith(branch + " "))
            and not line.startswith("refs/loopengine/")]


def _assert_own_candidate_ref(after: str, before: str, records: list[dict[str, Any]]) -> None:
    """The only candidate refs a run (a batch) adds are its own, named by its records."""
    new = {line.split()[0] for line in after.splitlines()} - {
        line.split()[0] for line in before.splitlines()}
    new = {name for name in new if name.startswith("refs/loopengine/")}
    assert new <= {rec.get("ref") for rec in records}, f"refs left behind: {new}"


def _index_without(index: str, paths: set[str]) -> list[str]:
    return [e for e in index.split("\0") if e and e.split("\t", 1)[-1] not in paths]


@pytest.fixture
def guarded(repo: Repo, isolated_env: Path) -> Iterator[Any]:
    """``guarded(*args)`` runs loopengine and asserts the guarantees afterwards."""

    def call(*args: str, **kwargs: Any) -> Result:
        before = snapshot(repo, isolated_env)
        result = repo.run(*args, **kwargs)
        assert_guarantees(repo, before, isolated_env, result.record)
        return result

    yield call


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Runs started by a test; killed if the test fails half-way."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
