"""Tables for ``results`` and ``history``: rich on a terminal, plain aligned text otherwise."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click

# Wide enough that no row is ever wrapped when the output goes to a file or a pipe.
PIPE_WIDTH = 100_000


def cell(text: str) -> str:
    """One line per row: a newline or tab inside a value would break the columns."""
    return " ".join(text.split()) if any(c in text for c in "\t\n\r\f\v") else text


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]],
                styles: dict[int, dict[str, str]] | None = None) -> None:
    """Columns separated by two spaces; on a terminal with colours and wrapping."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    stdout = sys.stdout
    terminal = _isatty(stdout)
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0),
                  header_style="bold" if terminal else "", expand=False)
    for i, name in enumerate(columns):
        last = i == len(columns) - 1
        table.add_column(name, no_wrap=not (terminal and last), overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell(value), style=(styles or {}).get(i, {}).get(value, ""))
                        for i, value in enumerate(row)))
    if terminal:
        Console(file=stdout, highlight=False).print(table)
        return
    buffer = io.StringIO()
    Console(file=buffer, width=PIPE_WIDTH, no_color=True, highlight=False,
            force_terminal=False).print(table)
    click.echo("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()))


def print_json_lines(items: Iterable[dict[str, Any]]) -> None:
    for item in items:
        click.echo(json.dumps(item, ensure_ascii=False, separators=(",", ":")))


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
