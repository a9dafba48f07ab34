"""``loopengine run``: one iteration, its record as one JSON line on stdout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from loopengine.progress import make_reporter


def run(task_path: str, root: Path, patch_file: Path | Sequence[Path] | None,
        keep_sandbox: bool, verbose: bool, *, candidates: int = 1, jobs: int = 1) -> int:
    """Run one iteration, print the record and a one-line diagnosis; the exit status.

    Several patches, or more than one candidate, make a batch (contract section 12).
    """
    from loopengine.engine import Options, run_iteration

    patches = [] if patch_file is None else \
        [patch_file] if isinstance(patch_file, Path) else list(patch_file)
    if len(patches) > 1 or candidates > 1:
        from loopengine.commands.batch import batch

        return batch(task_path, root, patches, candidates, jobs, verbose)
    patch_file = patches[0] if patches else None
    reporter = make_reporter(verbose)
    try:
        outcome = run_iteration(Options(task_path=task_path, repo_root=root,
                                        patch_file=patch_file, keep_sandbox=keep_sandbox,
                                        reporter=reporter))
    finally:
        reporter.close()
    record = outcome.record
    click.echo(record.to_json())
    if outcome.message:
        click.echo(f"loopengine: {outcome.message}", err=True)
    elif record.status == "crash":
        click.echo(f"loopengine: crash ({record.crash_kind}): {record.reason}", err=True)
    if verbose and record.crash_kind == "internal":
        log = root / "work" / "runs" / record.run_id / "engine.log"
        if log.exists():
            click.echo(log.read_text(), err=True)
    return outcome.exit_code
