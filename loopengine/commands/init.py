"""``loopengine init TASK_ID``: a working task scaffold under ``tasks/TASK_ID/``.

The files come from ``loopengine/templates/`` (package data); ``{{task_id}}`` in them is
replaced by the id.  The scaffold validates and runs as it is, with only the standard
library: its mutator adds one missing section per run, so the first runs keep and climb,
and a run with nothing left to add is a discard.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import click

from loopengine import git
from loopengine.commands import CommandError

TASK_ID = re.compile(r"[A-Za-z0-9._-]+")
PLACEHOLDER = "{{task_id}}"
# The order `init` lists them in: the task file first, then what it runs.
TEMPLATES = ("task.yaml", "notes.md", "rubric.json", "mutate.py", "evaluate.py", "score.py")


def check_task_id(task_id: str) -> str | None:
    """Why ``task_id`` cannot be a task id, or None when it can."""
    if not TASK_ID.fullmatch(task_id):
        return f"{task_id!r}: a task id is made of A-Z a-z 0-9 . _ - only"
    if set(task_id) == {"."}:
        return f"{task_id!r}: a task id cannot be only dots"
    return None


def render(name: str, task_id: str) -> str:
    source = resources.files("loopengine").joinpath("templates", name)
    return source.read_text(encoding="utf-8").replace(PLACEHOLDER, task_id)


def init(root: Path, task_id: str) -> None:
    problem = check_task_id(task_id)
    if problem:
        raise CommandError(problem)
    folder = root / "tasks" / task_id
    shown = _shown(folder, root)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()  # exclusive: never write into a folder someone else made
    except FileExistsError:
        if not folder.parent.is_dir():
            raise CommandError(f"cannot create {shown}/: {_shown(folder.parent, root)} is not a "
                               "folder") from None
        raise CommandError(f"{shown}/ already exists; nothing was written "
                           "(pick another id, or remove the folder first)") from None
    except OSError as exc:
        raise CommandError(f"cannot create {shown}/: {exc.strerror}") from None
    for name in TEMPLATES:
        (folder / name).write_text(render(name, task_id), encoding="utf-8")
    task_file = f"{shown}/task.yaml"
    click.echo(f"created {shown}/: {', '.join(TEMPLATES)}")
    click.echo("next:")
    click.echo(f"  loopengine validate --task {task_file}")
    click.echo(f"  loopengine run --task {task_file}")
    if not _work_ignored(root):
        click.echo("note: add /work/ to .gitignore (loopengine writes its records there)")


def _shown(path: Path, root: Path) -> str:
    """``path`` as the user should type it: relative when they are inside the repository."""
    cwd = Path.cwd().resolve()
    if cwd == root.resolve() or root.resolve() in cwd.parents:
        return Path(os.path.relpath(path, cwd)).as_posix()
    return path.as_posix()


def _work_ignored(root: Path) -> bool:
    if not git.repo_info(root).is_git:
        return True  # nothing to ignore it from
    proc = git.run(git.Context(root), "check-ignore", "-q", "--no-index", "work/results.jsonl",
                   check=False)
    return proc.returncode == 0
