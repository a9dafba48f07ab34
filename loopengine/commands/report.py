"""``loopengine report``: write the HTML report and say where it is."""

from __future__ import annotations

from pathlib import Path

import click


def report(root: Path, task: str | None, out: Path | None, as_json: bool) -> None:
    import json

    from loopengine.report import write_report

    written = write_report(root, task, out)
    if as_json:
        click.echo(json.dumps(written.summary(), ensure_ascii=False))
        return
    tasks = len(written.campaigns)
    click.echo(f"wrote {written.path} ({tasks} task{'s' * (tasks != 1)}); "
               "open it in a browser, it needs no network")
