"""``loopengine run`` with several candidates: one record line per candidate, in run_id order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from loopengine.progress import make_reporter


def batch(task_path: str, root: Path, patches: Sequence[Path], candidates: int, jobs: int,
          verbose: bool) -> int:
    from loopengine.campaign.batch import BatchOptions, run_batch

    reporter = make_reporter(verbose)
    try:
        outcome = run_batch(BatchOptions(task_path=task_path, repo_root=root,
                                         patches=tuple(patches),
                                         candidates=0 if patches else candidates,
                                         jobs=jobs, reporter=reporter))
    finally:
        reporter.close()
    for record in sorted(outcome.records, key=lambda r: r.run_id):
        click.echo(record.to_json())
    for message in outcome.messages:
        click.echo(f"loopengine: {message}", err=True)
    for record in outcome.records:
        if record.status == "crash" and not any(m.startswith(record.run_id)
                                                for m in outcome.messages):
            click.echo(f"loopengine: {record.run_id}: crash ({record.crash_kind}): "
                       f"{record.reason}", err=True)
    return outcome.exit_code
