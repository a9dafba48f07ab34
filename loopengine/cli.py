"""click commands: the one place that turns errors into messages and exit codes."""

from __future__ import annotations

import sys

if sys.argv[1:2] in (["run"], ["loop"]) or sys.argv[0].endswith("run_task.py"):
    # Before the heavier imports: a signal sent while Python starts still ends in a
    # record and exit status 130 / 143, not a traceback.
    from loopengine import faults
    from loopengine.signals import catch_early

    catch_early()
    faults.startup_signal()

import json
from pathlib import Path
from typing import NoReturn

import click

from loopengine.errors import LoopError


def repo_root(repo: str | None, *, whole: bool = True) -> Path:
    """``--repo DIR``; else the git top level of the current directory; else the cwd.

    ``whole``: ``--repo`` must not be a subfolder of a git repository (commands that run
    steps or write); the commands that only read records take any folder.
    """
    from loopengine import git

    if repo is not None:
        root = Path(repo).resolve()
        top = git.toplevel(root) if whole else None
        if top is not None and top.resolve() != root:
            # A subfolder is neither the repository (its keeps could not be committed
            # alone) nor a plain folder (its work/ would be untracked junk in the user's
            # repository): refuse before anything is written.
            raise click.BadParameter(
                f"{repo} is inside the git repository {top.resolve()}, not its top level; "
                f"use --repo {top.resolve()} (task paths and cwd values are relative to "
                "it), or make the folder a repository of its own (git init)",
                param_hint="'--repo'")
        return root
    cwd = Path.cwd()
    top = git.toplevel(cwd)
    return top.resolve() if top is not None else cwd.resolve()


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"loopengine: {message}", err=True)
    sys.exit(code)


REPO_OPTION = click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    help="Repository root (default: the git top level of the current directory).",
)


class Group(click.Group):
    """Turns a ``LoopError`` from any command into its message and exit status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LoopError as exc:
            fail(str(exc))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loopengine")
def main() -> None:
    """loopengine: one safe, baseline-aware optimization iteration per call."""


@main.command()
@click.option("--task", "task_path", required=True, type=str,
              help="Path to the task file (task.yaml), relative to the current directory.")
@REPO_OPTION
@click.option("--patch", "patch_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
              help="Use this unified diff as the candidate instead of running the mutator "
                   "(- reads it from standard input).  Given several times: a batch, one "
                   "candidate per patch.")
@click.option("--candidates", type=click.IntRange(min=1), metavar="N",
              help="A batch: run the mutator N times, each in its own sandbox "
                   "(LOOPENGINE_CANDIDATE=0..N-1), and keep at most the best.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="J",
              help="Evaluate up to J candidates of a batch at once.")
@click.option("--keep-sandbox", is_flag=True,
              help="Leave the sandbox on disk for inspection (its path goes to stderr).")
@click.option("-v", "--verbose", is_flag=True,
              help="Show each step and its output on stderr.")
def run(task_path: str, repo: str | None, patch_files: tuple[Path, ...],
        candidates: int | None, jobs: int, keep_sandbox: bool, verbose: bool) -> None:
    """Run one iteration (or a batch) and print each result record as one JSON line."""
    from loopengine.commands.run import run as run_command

    if patch_files and candidates:
        raise click.UsageError("--patch and --candidates are two kinds of batch: use one")
    if sum(str(p) == "-" for p in patch_files) > 1:
        raise click.UsageError("--patch - reads standard input, which can be read only once")
    batch = len(patch_files) > 1 or (candidates or 1) > 1
    if batch and keep_sandbox:
        raise click.UsageError("--keep-sandbox keeps the sandbox of a single run, not a batch")
    sys.exit(run_command(task_path, repo_root(repo), patch_files, keep_sandbox, verbose,
                         candidates=candidates or 1, jobs=jobs))


@main.command()
@click.option("--task", "task_path", required=True, type=str, help="Path to the task file.")
@REPO_OPTION
@click.option("--run", "run_baseline", is_flag=True,
              help="Also evaluate the current baseline once in a sandbox (runner and scorer; "
              "nothing stored) and print its score and metrics.")
@click.option("-v", "--verbose", is_flag=True, help="With --run: show each step on stderr.")
def validate(task_path: str, repo: str | None, run_baseline: bool, verbose: bool) -> None:
    """Check a task file and what it names in the repository.

    Prints every problem, one a line (file: field: message), and warnings; exit 0 when the
    task is fine, 1 when it is not.  With --run, the baseline is measured once.
    """
    from loopengine.commands.validate import validate as validate_command

    sys.exit(validate_command(repo_root(repo), task_path, run_baseline, verbose))


@main.command()
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of the task file."""
    from loopengine.task import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@click.argument("run_id")
@REPO_OPTION
@click.option("--patch", "patch_only", is_flag=True,
              help="Print only the candidate patch, byte for byte: `show ID --patch | git apply`.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, help="Colour the output: auto means when stdout is a terminal.")
@click.option("--lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many lines of the end of each step's log to show.")
@click.option("--apply", "apply", is_flag=True,
              help="Propose the saved candidate (its ref) again as a new run, rebased "
                   "three-way onto the current baseline; prints the new run's record.")
@click.option("--task", "task_path", type=str,
              help="With --apply: the task file (default: tasks/*/task.yaml with its id).")
@click.option("-v", "--verbose", is_flag=True, help="With --apply: show each step on stderr.")
def show(run_id: str, repo: str | None, patch_only: bool, color: str, lines: int,
         apply: bool, task_path: str | None, verbose: bool) -> None:
    """Show one run: record, candidate patch, step logs.

    Prints the record, the candidate patch and the end of each step's log. RUN_ID is a
    run id from a record, any prefix or suffix of it that names one run, or `last`
    for the newest run.
    """
    if apply:
        from loopengine.commands.apply import apply as apply_command

        sys.exit(apply_command(repo_root(repo), run_id, task_path=task_path, verbose=verbose))
    from loopengine.commands.show import show as show_command

    show_command(repo_root(repo, whole=False), run_id, patch_only=patch_only, color=color,
                 lines=lines)


@main.command()
@click.option("--task", "task_id", metavar="ID", help="Only the keeps of this task id.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@REPO_OPTION
def history(task_id: str | None, as_json: bool, repo: str | None) -> None:
    """List the keep commits, newest first.

    The keep commits of the current branch, read back from their Loopengine-* trailers.
    """
    from loopengine.commands.history import history as history_command

    history_command(repo_root(repo, whole=False), task_id, as_json)


@main.command()
@click.option("--task", "task_id", metavar="ID", help="Only the records of this task id.")
@click.option("--last", type=click.IntRange(min=1), metavar="N",
              help="Only the last N records (after --task).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the records as stored, one JSON object per line.")
@click.option("--results", "results_file",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The results file to read (default: work/results.jsonl in the repository).")
@REPO_OPTION
def results(task_id: str | None, last: int | None, as_json: bool, results_file: Path | None,
            repo: str | None) -> None:
    """List the result records, oldest first.

    A table, or the records as stored (one JSON object per line) with --json.
    """
    from loopengine.commands.records import results as results_command

    results_command(repo_root(repo, whole=False), results_file, task_id, last, as_json)


def _task_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from loopengine.commands.init import check_task_id

    problem = check_task_id(value)
    if problem:
        raise click.BadParameter(problem)
    return value


@main.command()
@click.argument("task_id", callback=_task_id)
@REPO_OPTION
def init(task_id: str, repo: str | None) -> None:
    """Scaffold a working task in tasks/TASK_ID/.

    A task file, an artifact, a mutator, a runner and a scorer that validate and run as
    they are. An existing folder is never overwritten.
    """
    from loopengine.commands.init import init as init_command

    init_command(repo_root(repo), task_id)


@main.command()
def guide() -> None:
    """Print the guide for AI agents.

    How to drive loopengine: the loop, what each status asks next, tasks, patches.
    """
    from loopengine.commands.guide import guide as guide_command

    guide_command()


@main.command()
@click.option("--task", "task_path", required=True, type=str, help="Path to the task file.")
@click.option("--repeats", type=click.IntRange(min=2), default=10, show_default=True,
              help="How many times to measure the baseline.")
@click.option("--effect", type=click.FloatRange(min=0, min_open=True), metavar="SIZE",
              help="The improvement worth finding (default: one standard deviation).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Show each step and its output on stderr.")
@REPO_OPTION
def calibrate(task_path: str, repeats: int, effect: float | None, as_json: bool,
              verbose: bool, repo: str | None) -> None:
    """Measure the baseline's noise; suggest repeats and min_improvement.

    Runs the task's runner and scorer N times on the current baseline (in a sandbox) and
    prints the mean, the standard deviation, and the policy that keeps false keeps under
    1 - policy.confidence for an improvement of the stated size.  Stores nothing.
    """
    from loopengine.commands.calibrate import calibrate as calibrate_command
    from loopengine.progress import make_reporter

    reporter = make_reporter(verbose)
    try:
        calibrate_command(repo_root(repo), task_path, repeats, effect, as_json, reporter)
    finally:
        reporter.close()


@main.command()
@click.argument("commit")
@click.option("--task", "task_path", type=str,
              help="The task file (default: the one in COMMIT whose id the keep names).")
@click.option("-v", "--verbose", is_flag=True, help="Show each step and its output on stderr.")
@REPO_OPTION
def verify(commit: str, task_path: str | None, verbose: bool, repo: str | None) -> None:
    """Re-measure a keep commit against its parent.

    Parent and commit are measured interleaved in a fresh sandbox with the task's repeats
    and confidence.  Exit 0 when the keep reproduces, 1 when it does not, 2 when it could
    not be measured.
    """
    from loopengine.commands.verify import UNVERIFIED
    from loopengine.commands.verify import verify as verify_command
    from loopengine.progress import make_reporter

    reporter = make_reporter(verbose)
    try:
        code = verify_command(repo_root(repo), commit, task_path, reporter)
    except LoopError as exc:
        fail(f"could not verify: {exc}", UNVERIFIED)
    finally:
        reporter.close()
    sys.exit(code)


# --- campaigns: batches, loop, gc, show --apply (issue 12) ---------------------------
# (commands of this section go here)


@main.command()
@click.option("--task", "task_id", metavar="ID", help="Only the runs of this task id.")
@click.option("--keep-last", type=click.IntRange(min=0), default=100, show_default=True,
              metavar="N", help="Keep the newest N discards and crashes of each task.")
@click.option("--json", "as_json", is_flag=True, help="Print what was pruned as one JSON line.")
@REPO_OPTION
def gc(task_id: str | None, keep_last: int, as_json: bool, repo: str | None) -> None:
    """Prune old discards' and crashes' candidate refs and run folders.

    Per task, the newest N discards and crashes keep their ref (refs/loopengine/...) and
    their work/runs/ folder; older ones lose both.  A kept run is never pruned.
    """
    from loopengine.commands.gc import gc as gc_command

    gc_command(repo_root(repo), task_id, keep_last, as_json)


@main.command()
@click.option("--task", "task_path", type=str,
              help="Path to the task file (not needed with --resume).")
@click.option("--iterations", type=click.IntRange(min=1), metavar="N",
              help="Stop after N iterations (a batch is one iteration).")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Start no iteration after S seconds of the loop (resumes included).")
@click.option("--patience", type=click.IntRange(min=1), metavar="P",
              help="Stop after P iterations in a row without a keep.")
@click.option("--target", type=float, metavar="SCORE",
              help="Stop once the best score reaches SCORE (in the objective's direction).")
@click.option("--max-crashes", type=click.IntRange(min=1), default=3, show_default=True,
              metavar="K", help="Stop (exit 1) after K iterations in a row that crashed.")
@click.option("--candidates", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N", help="Each iteration a batch of N mutator candidates.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="J", help="Evaluate up to J candidates of a batch at once.")
@click.option("--resume", "resume", metavar="LOOP_ID",
              help="Continue a stopped or killed loop with what is left of its budget.")
@click.option("-v", "--verbose", is_flag=True, help="Show each step on stderr.")
@REPO_OPTION
def loop(task_path: str | None, iterations: int | None, max_seconds: float | None,
         patience: int | None, target: float | None, max_crashes: int, candidates: int,
         jobs: int, resume: str | None, verbose: bool, repo: str | None) -> None:
    """Run iterations of one task until a stop rule holds.

    Stops on --iterations, --max-seconds, --patience, --target, --max-crashes, or a file
    work/loops/<loop_id>/STOP.  Each iteration writes its ordinary record; stdout is one
    summary line at the end.  Exit 0; 1 when it stopped on --max-crashes; 130 / 143 on
    SIGINT / SIGTERM (the running iteration ends as `run` would, the state is saved).
    """
    from loopengine.commands.loop import loop as loop_command

    if resume is None and not task_path:
        raise click.UsageError("--task is required (or --resume LOOP_ID)")
    if resume is not None and (task_path or iterations or max_seconds or patience
                               or target is not None):
        raise click.UsageError("--resume continues a loop with its own task and stop "
                               "rules; give no others")
    sys.exit(loop_command(task_path or "", repo_root(repo), iterations=iterations,
                          max_seconds=max_seconds, patience=patience, target=target,
                          max_crashes=max_crashes, candidates=candidates, jobs=jobs,
                          resume=resume, verbose=verbose))


# --- views: status, report, mcp (issue 14) ---------------------------------------------


@main.command()
@click.option("--task", "task_id", metavar="ID", help="Only this task id.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@REPO_OPTION
def status(task_id: str | None, as_json: bool, repo: str | None) -> None:
    """Show where each task stands: baseline, last keep, counts, a running loop.

    Reads the records, the baseline store and the task files; runs nothing.  A baseline
    is "current" when the next run would compare with it: same artifact content, same
    evaluation fingerprint (HEAD plus the tracked files changed since; untracked files
    are not looked at).
    """
    from loopengine.commands.status import status as status_command

    status_command(repo_root(repo), task_id, as_json)


@main.command()
@click.option("--task", "task_id", metavar="ID", help="Only this task id.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Where to write the page (default: work/report.html in the repository).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the path and each task's figures as one JSON object.")
@REPO_OPTION
def report(task_id: str | None, out: Path | None, as_json: bool, repo: str | None) -> None:
    """Write a self-contained HTML report of the campaigns.

    Per task: the score of each run (keeps, discards, crashes by kind), the best so far,
    the confidence intervals, where the evaluation changed; start and best score, counts,
    wall time, and the table of keeps.  One file; it needs no network to be read.
    """
    from loopengine.commands.report import report as report_command

    report_command(repo_root(repo), task_id, out, as_json)


@main.command()
@REPO_OPTION
def mcp(repo: str | None) -> None:
    """Serve validate, run, status, results, show, history and report to an agent over MCP.

    An MCP server on stdin/stdout (the official Python SDK).  The repository is fixed
    when it starts: --repo, else the git top level of the current directory; task paths
    in the tools are relative to it.  Nothing but protocol messages goes to stdout.
    """
    from loopengine.mcp_server import serve

    serve(repo_root(repo))


# --- cluster and isolation helpers (issues 11, 13) -------------------------------------
# (commands of this section go here)


if __name__ == "__main__":  # pragma: no cover
    main()
