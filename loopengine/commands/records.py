"""``loopengine results``: the records in ``results.jsonl``, as a table or as JSON lines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from loopengine.commands import CommandError
from loopengine.commands.table import print_json_lines, print_table
from loopengine.decide import fmt
from loopengine.progress import STATUS_STYLES
from loopengine.results import DEFAULT_RESULTS, read_records

COLUMNS = ("run", "status", "score", "baseline", "diff", "reason")


def results(root: Path, results_file: Path | None, task: str | None, last: int | None,
            as_json: bool) -> None:
    """``results_file`` as typed (relative to the current directory), or the default."""
    path = results_file if results_file is not None else root / DEFAULT_RESULTS
    shown = str(results_file) if results_file is not None else _shown(path)
    if path.is_dir():
        raise CommandError(f"{shown}: is a directory, not a results file")
    try:
        records, damaged = read_records(path)
    except OSError as exc:
        raise CommandError(f"{shown}: cannot read: {exc.strerror}") from None
    if damaged:
        lines = "line" if damaged == 1 else "lines"
        click.echo(f"skipped {damaged} damaged {lines} in {shown}", err=True)
    chosen = [r for r in records if task is None or r.get("task_id") == task]
    if last is not None:
        chosen = chosen[-last:] if last > 0 else []
    if as_json:
        print_json_lines(chosen)
        return
    styles = {1: {status: style for status, style in STATUS_STYLES.items()}}
    print_table(COLUMNS, (_row(r) for r in chosen), styles)


def _row(record: dict[str, Any]) -> list[str]:
    return [
        str(record.get("run_id", "")),
        str(record.get("status", "")),
        _score(record.get("candidate_score")),
        _score(record.get("baseline_score")),
        str(record.get("diff_summary") or "-"),
        str(record.get("reason", "")),
    ]


def _score(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return fmt(value)
    return "-"



def _shown(path: Path) -> str:
    rel = os.path.relpath(path, Path.cwd())
    return str(path) if rel == ".." or rel.startswith("../") else rel
