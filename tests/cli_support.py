"""Shared by the tests of the commands an agent and a person use around ``run``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from conftest import Repo

from loopengine.cli import main


def invoke(*args: str, cwd: Path | None = None, input: bytes | str | None = None) -> Result:
    """``loopengine ARGS`` in this process, as a user would type it (stdout not a terminal)."""
    with contextlib.chdir(cwd or Path.cwd()):
        return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def run_ok(repo: Repo, *args: str, task: str = "tasks/demo/task.yaml") -> dict[str, Any]:
    """One real ``loopengine run`` (a subprocess); its record."""
    result = repo.run(*args, task=task)
    assert len(result.stdout.splitlines()) == 1, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """What a plain table looks like: left-aligned columns two spaces apart, no trailing
    blanks, one line per row."""
    widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in [columns, *rows]]
    return "\n".join(lines) + "\n"
