"""click commands: the one place that turns errors into messages and exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from loopengine.errors import LoopError


def repo_root(repo: str | None) -> Path:
    """``--repo DIR``; else the git top level of the current directory; else the cwd."""
    if repo is not None:
        return Path(repo).resolve()
    from loopengine import git

    cwd = Path.cwd()
    top = git.toplevel(cwd)
    return top.resolve() if top is not None else cwd.resolve()


def fail(message: str, code: int = 1) -> None:
    click.echo(f"loopengine: {message}", err=True)
    sys.exit(code)


REPO_OPTION = click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    help="Repository root (default: the git top level of the current directory).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loopengine")
def main() -> None:
    """loopengine: one safe, baseline-aware optimization iteration per call."""


@main.command()
@click.option("--task", "task_path", required=True, type=str,
              help="Path to the task file (task.yaml), relative to the current directory.")
@REPO_OPTION
@click.option("--patch", "patch_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this unified diff as the candidate instead of running the mutator.")
@click.option("--keep-sandbox", is_flag=True,
              help="Leave the sandbox on disk for inspection (its path goes to stderr).")
@click.option("-v", "--verbose", is_flag=True,
              help="Show each step and its output on stderr.")
def run(task_path: str, repo: str | None, patch_file: Path | None, keep_sandbox: bool,
        verbose: bool) -> None:
    """Run one iteration and print its result record as one JSON line."""
    from loopengine.engine import Options, run_iteration
    from loopengine.progress import Reporter, StderrReporter

    show = verbose or sys.stderr.isatty()
    reporter = StderrReporter(verbose=verbose) if show else Reporter()
    outcome = run_iteration(Options(task_path=task_path, repo_root=repo_root(repo),
                                    patch_file=patch_file, keep_sandbox=keep_sandbox,
                                    reporter=reporter))
    click.echo(outcome.record.to_json())
    if outcome.message:
        click.echo(f"loopengine: {outcome.message}", err=True)
    elif outcome.record.status == "crash":
        click.echo(f"loopengine: crash ({outcome.record.crash_kind}): {outcome.record.reason}",
                   err=True)
    if verbose and outcome.record.crash_kind == "internal":
        log = repo_root(repo) / "work" / "runs" / outcome.record.run_id / "engine.log"
        if log.exists():
            click.echo(log.read_text(), err=True)
    sys.exit(outcome.exit_code)


@main.command()
@click.option("--task", "task_path", required=True, type=str, help="Path to the task file.")
@REPO_OPTION
def validate(task_path: str, repo: str | None) -> None:
    """Check a task file; run nothing."""
    from loopengine.task import load_task

    try:
        task = load_task(task_path, repo_root(repo))
    except LoopError as exc:
        fail(str(exc))
    click.echo(f"{task_path}: ok (task {task.id})")


@main.command()
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of the task file."""
    from loopengine.task import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
