"""``loopengine validate``: a preflight of a task file, before anything runs.

Every problem at once, one a line, ``file: dotted.path: message``:

- the schema (``task.load_task``: types, unknown keys, path rules, a results path that is
  not a safe place);
- what the repository can tell before running: a step's ``cwd`` that does not exist (or
  that the sandbox would not have, because git ignores everything in it), a command whose
  program (or the script an interpreter is given) is not found;
- warnings, which do not fail the check: an ``artifacts.include`` entry that matches no
  file (legitimate when the mutator creates the artifact; otherwise the reason every
  candidate would be discarded).

``--run`` then evaluates the current baseline once, in a sandbox like ``run``'s (runner and
scorer, no mutator), and prints its score and metrics, and which constraint metrics the
scorer does not emit.  Nothing is stored: no record, no baseline, no run folder.

Plain ``validate`` imports neither the engine nor anything heavy; ``--run`` does.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shlex
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from loopengine.errors import LoopError, TaskError
from loopengine.task import RESERVED_DIRS, Task, _glob_regex, load_task, read_document

STEPS = ("mutator", "runner", "scorer")

# A first word that is shell syntax: the rest is not "a program and its arguments".
_SYNTAX = frozenset({"if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done",
                     "case", "esac", "function", "select", "time", "{", "}", "(", ")", "!",
                     "[[", "coproc"})
# Builtins of /bin/sh (and bash's common ones): always found.
_BUILTINS = frozenset({":", ".", "source", "cd", "echo", "printf", "exec", "export", "set",
                       "unset", "test", "[", "true", "false", "eval", "exit", "return",
                       "shift", "trap", "wait", "read", "umask", "ulimit", "command", "type",
                       "alias", "unalias", "let", "local", "pwd", "kill", "times", "getopts",
                       "hash", "readonly", "break", "continue", "builtin", "declare",
                       "typeset", "env", "nohup", "nice", "timeout", "xargs"})
_OPERATORS = frozenset({"&&", "||", ";", "|", "&", ";;", "|&"})
_INTERPRETERS = re.compile(r"(python|pypy)[0-9.]*|bash|sh|dash|zsh|node|ruby|perl|Rscript")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
_EXPANSION = re.compile(r"[$`*?\[~]")


@dataclass(frozen=True)
class Finding:
    where: str  # the dotted field
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Checked:
    """What ``validate`` found: the task (None when the file is not valid), the errors and
    the warnings, each a line ``file: dotted.field: message``."""

    task: Task | None
    errors: list[str]
    warnings: list[str]
    marked_warnings: list[str]  # the same, as the CLI prints them: "field: warning: ..."

    @property
    def ok(self) -> bool:
        return self.task is not None and not self.errors


def check(root: Path, task_path: str) -> Checked:
    """Every problem of the task file at ``task_path``, schema and preflight; runs nothing."""
    task: Task | None = None
    errors: list[str] = []
    try:
        task = load_task(task_path, root)
    except TaskError as exc:
        errors = list(exc.problems)
    if task is not None and task.executor.kind != "local":
        from loopengine import executors  # only then: validate starts without the engine

        try:  # executor.kind ray where Ray is not installed (contract section 14)
            executors.check_available(task)
        except TaskError as exc:
            errors.append(str(exc))
    findings = list(preflight(root, task_path, task, errors))
    errors += [f"{task_path}: {f.where}: {f.message}" for f in findings if not f.warning]
    warned = [f for f in findings if f.warning]
    return Checked(task, errors, [f"{task_path}: {f.where}: {f.message}" for f in warned],
                   [f"{task_path}: {f.where}: warning: {f.message}" for f in warned])


def validate(root: Path, task_path: str, run: bool, verbose: bool) -> int:
    """Print what is wrong with the task file; the exit status (0 fine, 1 problems)."""
    checked = check(root, task_path)
    for line in checked.errors:
        click.echo(f"loopengine: {line}", err=True)
    for line in checked.marked_warnings:
        click.echo(f"loopengine: {line}", err=True)
    task = checked.task
    if task is None or not checked.ok:
        return 1
    click.echo(f"{task_path}: ok (task {task.id})")
    line = isolation_line(task)
    if line:
        click.echo(line)
    if run:
        return run_baseline(root, task_path, task, verbose)
    return 0


def isolation_line(task: Task) -> str | None:
    """Which isolation the task's steps would get on this machine (contract section 10).

    ``loopengine.isolation.describe(task)`` says it; until that module exists, nothing.
    """
    try:
        from loopengine.isolation import describe  # type: ignore[attr-defined]
    except ImportError:
        return None
    return f"isolation: {describe(task)}"


# --- what the repository can tell before running ----------------------------------------


@dataclass(frozen=True)
class _Step:
    name: str
    cwd: str
    command: str


def preflight(root: Path, task_path: str, task: Task | None,
              problems: list[str]) -> Iterator[Finding]:
    """The checks of the repository, also on a task file with schema errors: every value
    that is itself valid is checked, so one ``validate`` reports everything."""
    steps, include, real_root = _parts(root, task_path, task, problems)
    if real_root is None:
        return
    listing = _Listing(real_root)
    for step in steps:
        cwd_problem = _cwd_problem(real_root, step.cwd, listing)
        if cwd_problem:
            yield Finding(f"{step.name}.cwd", cwd_problem)
            continue
        for problem in _program_problems(real_root, step.cwd, step.command):
            yield Finding(f"{step.name}.command", problem)
    for i, pattern in include:
        if not any(_glob_regex(pattern).fullmatch(path) for path in listing.files(pattern)):
            yield Finding(f"artifacts.include[{i}]",
                          f"{pattern!r} matches no file in the repository; a candidate can "
                          "only create it (policy.keep_when_no_baseline decides its first "
                          "keep), and a change anywhere else is discarded as not_an_artifact",
                          warning=True)


def _parts(root: Path, task_path: str, task: Task | None, problems: list[str],
           ) -> tuple[list[_Step], list[tuple[int, str]], Path | None]:
    if task is not None:
        steps = [_Step(name, getattr(task, name).cwd, getattr(task, name).command)
                 for name in STEPS]
        return steps, list(enumerate(task.include)), task.repo_root
    try:
        document, _, real_root, task_dir = read_document(task_path, root)
    except LoopError:
        return [], [], None  # nothing to look at: the file itself is the problem
    flagged = {line.split(": ", 2)[1] for line in problems if line.count(": ") >= 2}
    steps = []
    for name in STEPS:
        step = document.get(name)
        if not isinstance(step, dict) or any(
                f == name or f.startswith((f"{name}.cwd", f"{name}.command")) for f in flagged):
            continue
        cwd, command = step.get("cwd", "."), step.get("command")
        if isinstance(cwd, str) and isinstance(command, str) and command.strip():
            steps.append(_Step(name, posixpath.normpath(cwd), command))
    include: list[tuple[int, str]] = []
    artifacts = document.get("artifacts")
    entries = artifacts.get("include") if isinstance(artifacts, dict) else None
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, str) and not any(f.startswith(f"artifacts.include[{i}]")
                                              for f in flagged):
            include.append((i, posixpath.normpath(posixpath.join(task_dir, entry))))
    return steps, include, real_root


class _Listing:
    """The files a sandbox would hold: in a git repository with a commit, the tracked ones
    and the untracked ones git does not ignore; elsewhere (a copy), every file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._git: bool | None = None

    def uses_git(self) -> bool:
        if self._git is None:
            proc = self._run("rev-parse", "--verify", "-q", "HEAD")
            self._git = proc is not None and proc.returncode == 0
        return self._git

    def _run(self, *args: str) -> Any:
        from loopengine import git

        try:
            return git.run(git.Context(self.root), *args, check=False)
        except (OSError, LoopError):
            return None

    def files(self, pattern: str) -> list[str]:
        """The files below the literal folder that starts ``pattern`` (or below ``.``)."""
        fixed = []
        for part in pattern.split("/")[:-1]:
            if _EXPANSION.search(part):
                break
            fixed.append(part)
        return self._below("/".join(fixed) or ".")

    @functools.cache  # noqa: B019 -- one listing per folder, for one validate
    def _below(self, base: str, limit: int = 100_000) -> list[str]:
        if self.uses_git():
            proc = self._run("ls-files", "-z", "-co", "--exclude-standard", "--",
                             f":(literal){base}")
            if proc is None or proc.returncode != 0:
                return []
            from loopengine import git

            return git.split_z(proc.stdout)[:limit]
        return self._walk(base, limit)

    def _walk(self, base: str, limit: int) -> list[str]:
        found: list[str] = []
        start = self.root / base
        if start.is_file():
            return [base]
        for folder, dirs, names in os.walk(start):
            rel = Path(folder).relative_to(self.root).as_posix()
            if rel == ".":
                dirs[:] = [d for d in dirs if d not in RESERVED_DIRS]
            found += [name if rel == "." else f"{rel}/{name}" for name in names]
            if len(found) >= limit:
                break
        return found

    @functools.cache  # noqa: B019
    def has_files_below(self, folder: str) -> bool:
        if not self.uses_git():
            return True
        proc = self._run("ls-files", "-z", "-co", "--exclude-standard", "--",
                         f":(literal){folder}")
        return proc is None or bool(proc.stdout)


def _cwd_problem(root: Path, cwd: str, listing: _Listing) -> str | None:
    if cwd == ".":
        return None
    try:
        mode = (root / cwd).stat().st_mode
    except OSError:
        return f"{cwd!r} does not exist in the repository"
    if not stat.S_ISDIR(mode):
        return f"{cwd!r} is not a directory"
    if cwd.split("/")[0] in RESERVED_DIRS:
        return f"{cwd!r} is in {cwd.split('/')[0]}/, which the sandbox does not copy"
    if not listing.has_files_below(cwd):
        return (f"{cwd!r} holds no file that git tracks or sees (only ignored ones, or "
                "none), so the sandbox will not have it")
    return None


def _program_problems(root: Path, cwd: str, command: str) -> Iterator[str]:
    """The program of each simple command up to the first ``cd`` or shell construct, and
    the script an interpreter is told to run."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as exc:  # an unclosed quote: /bin/sh will refuse it too
        yield f"cannot be parsed as a shell command ({exc})"
        return
    for words in _simple_commands(tokens):
        if not words:
            continue
        program = words[0]
        if program in _SYNTAX or program == "cd":
            return  # what follows runs somewhere else, or is not a plain command
        if program in _BUILTINS or _EXPANSION.search(program):
            continue
        problem = _find(root, cwd, program)
        if problem:
            yield problem
            continue
        script = _script(words)
        if script and not (root / cwd / script).exists():
            yield f"script {script!r} (run by {words[0]}) not found in {cwd!r}"


def _simple_commands(tokens: list[str]) -> Iterator[list[str]]:
    words: list[str] = []
    skip_next = False
    for token in tokens:
        if skip_next:  # the target of a redirection
            skip_next = False
            continue
        if token in _OPERATORS:
            yield words
            words = []
        elif token and set(token) <= set("<>&"):  # a redirection: >, >>, 2>&1, &>, <
            skip_next = True
            if words and words[-1].isdigit():
                words.pop()  # the 2 of 2>
        elif not words and _ASSIGNMENT.fullmatch(token):
            continue  # FOO=bar prog
        else:
            words.append(token)
    yield words


def _find(root: Path, cwd: str, program: str) -> str | None:
    if "/" not in program:
        if shutil.which(program) is None:
            return f"program {program!r} not found on PATH"
        return None
    path = Path(program) if program.startswith("/") else root / cwd / program
    shown = program if program.startswith("/") else f"{program!r} in {cwd!r}"
    try:
        mode = path.stat().st_mode
    except OSError:
        return f"program {shown} not found"
    if not stat.S_ISREG(mode):
        return f"program {shown} is not a file"
    if not os.access(path, os.X_OK):
        return f"program {shown} is not executable (chmod +x)"
    return None


def _script(words: list[str]) -> str | None:
    """``python ../../x.py``: the script argument, when it names a file to check."""
    if not _INTERPRETERS.fullmatch(os.path.basename(words[0])):
        return None
    for word in words[1:]:
        if word.startswith("-"):
            if word in ("-c", "-m", "-e", "--eval", "-E"):
                return None  # code or a module, not a file
            continue
        if _EXPANSION.search(word) or word.startswith("/"):
            return None
        return word if "." in os.path.basename(word) or "/" in word else None
    return None


# --- validate --run ----------------------------------------------------------------------


def run_baseline(root: Path, task_path: str, task: Task, verbose: bool) -> int:
    """Evaluate the current baseline once in a sandbox; print score, metrics and the
    constraint metrics the scorer does not emit.  1 when it cannot be evaluated."""
    import shutil as sh
    import time

    from loopengine import measure
    from loopengine.commands.calibrate import session, steps
    from loopengine.iteration.common import StepCrash
    from loopengine.progress import make_reporter

    reporter = make_reporter(verbose)
    it = None
    try:
        with session(root, task_path, reporter=reporter) as it:
            assert it.task is not None and it.sb is not None
            runner = steps(it, it.task, time.monotonic() + it.task.max_seconds)
            evaluate = measure.Evaluator(it.task, it.sb, [], runner.run, runner.parse_score,
                                         log_dir=it.run_dir, phase=reporter.phase)
            sample = evaluate(measure.BASELINE)
    except StepCrash as exc:
        click.echo(f"loopengine: the baseline could not be evaluated: crash ({exc.crash_kind}): "
                   f"{exc}", err=True)
        if exc.tail:
            click.echo(exc.tail.rstrip("\n"), err=True)
        return 1
    except measure._ArtifactChanged:  # what run turns into a discard of every candidate
        click.echo("loopengine: the runner or scorer changed an artifact while measuring the "
                   "baseline; every candidate would be discarded (\"an artifact changed after "
                   "validation\")", err=True)
        return 1
    finally:
        reporter.close()
        if it is not None:
            sh.rmtree(it.run_dir, ignore_errors=True)  # nothing stored
    return _report(task, sample.score, sample.metrics)


def _report(task: Task, score: float, metrics: dict[str, Any]) -> int:
    import json

    click.echo(f"baseline score: {score!r} (measured once in a sandbox; nothing stored)")
    click.echo(f"metrics: {json.dumps(metrics, sort_keys=True, allow_nan=True)}")
    missing = [c.metric for c in task.constraints if c.metric not in metrics]
    for c in task.constraints:
        if c.metric in missing:
            continue
        value = metrics[c.metric]
        bounds = " and ".join(text for text in (
            f">= {c.min:g}" if c.min is not None else "",
            f"<= {c.max:g}" if c.max is not None else "") if text)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        holds = numeric and (c.min is None or value >= c.min) and (
            c.max is None or value <= c.max)
        click.echo(f"constraint {c.metric} {bounds}: {value!r} "
                   f"({'holds' if holds else 'violated by the baseline'})")
    if missing:
        have = ", ".join(sorted(metrics)) or "none"
        for i, c in enumerate(task.constraints):
            if c.metric in missing:
                click.echo(f"loopengine: {task.display_path}: constraints[{i}].metric: the "
                           f"scorer does not emit {c.metric!r} (its metrics: {have}); every "
                           "run would crash", err=True)
        return 1
    return 0
