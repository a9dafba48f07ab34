"""``loopengine show RUN_ID``: one run's record, candidate patch and step logs."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from loopengine.commands import CommandError
from loopengine.results import WORK_DIR

STEP_LOGS = ("mutator", "runner", "scorer")
# Reading the end of a log: enough bytes for ``lines`` lines of ordinary output.
TAIL_WINDOW = 256 * 1024
LAST = "last"  # `show last`: the newest run


def runs_dir(root: Path) -> Path:
    return root / WORK_DIR / "runs"


def resolve_run(root: Path, wanted: str) -> Path:
    """The run folder named ``wanted``: an exact run id, ``last`` (the newest run), or a
    prefix or a suffix of exactly one run id."""
    folder = runs_dir(root)
    shown = f"{WORK_DIR}/runs"
    if not wanted:
        raise CommandError("an empty run id matches every run; give a run id, a prefix or "
                           "a suffix of one, or `last`")
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    if wanted in names:
        return folder / wanted
    if wanted == LAST:
        # Run ids sort in start order, so the newest run is the greatest name.
        if not names:
            raise CommandError(f"no runs yet in {shown}")
        return folder / names[-1]
    matches = [name for name in names if name.startswith(wanted) or name.endswith(wanted)]
    if not matches:
        raise CommandError(f"no run {wanted!r} in {shown}")
    if len(matches) > 1:
        listed = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        part = "prefix" if any(name.startswith(wanted) for name in matches) else "suffix"
        raise CommandError(f"run id {part} {wanted!r} is ambiguous: {len(matches)} runs "
                           f"match ({listed})")
    return folder / matches[0]


@dataclass(frozen=True)
class RunView:
    run_id: str
    folder: Path
    record: dict[str, Any] | None
    record_problem: str | None
    patch: bytes | None

    def logs(self) -> list[Path]:
        """The step logs in step order, then any other log the run left."""
        known = [self.folder / f"{name}.log" for name in STEP_LOGS]
        others = sorted(p for p in self.folder.glob("*.log") if p not in known)
        return [p for p in known if p.is_file()] + others


def load_run(root: Path, prefix: str) -> RunView:
    folder = resolve_run(root, prefix)
    record: dict[str, Any] | None = None
    problem: str | None = None
    try:
        loaded = json.loads((folder / "record.json").read_bytes())
        if isinstance(loaded, dict):
            record = loaded
        else:
            problem = "record.json is not a JSON object"
    except FileNotFoundError:
        problem = "no record.json: the run was stopped before it wrote its record"
    except ValueError as exc:
        problem = f"record.json is damaged ({exc})"
    try:
        patch: bytes | None = (folder / "candidate.patch").read_bytes()
    except FileNotFoundError:
        patch = None
    return RunView(folder.name, folder, record, problem, patch)


def tail_lines(path: Path, count: int) -> tuple[list[str], bool]:
    """The last ``count`` lines of ``path`` and whether earlier lines were left out."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - TAIL_WINDOW)
        fh.seek(start)
        data = fh.read()
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the window's first line is probably cut
    cut = start > 0 or len(lines) > count
    return (lines[-count:] if count > 0 else []), cut


def show(root: Path, prefix: str, *, patch_only: bool, color: str, lines: int) -> None:
    view = load_run(root, prefix)
    colored = color == "always" or (color == "auto" and _stdout_isatty())
    if patch_only:
        if view.patch is None:
            raise CommandError(f"run {view.run_id} has no candidate patch "
                               "(nothing changed, or the run stopped before validation)")
        if colored:
            _print_rich(_patch_text(view.patch.decode("utf-8", "replace")))
        else:
            out = sys.stdout.buffer
            out.write(view.patch)  # byte-exact, so that `| git apply` takes it
            out.flush()
        return
    blocks = _blocks(view, lines)
    if colored:
        _print_rich(*(_rich_block(b) for b in blocks))
    else:
        click.echo("\n\n".join(f"{b.heading}\n{b.body}" if b.body else b.heading
                               for b in blocks))


@dataclass(frozen=True)
class Block:
    heading: str
    body: str
    kind: str  # "record", "patch", "log", "note"


def _blocks(view: RunView, lines: int) -> list[Block]:
    rel = f"{WORK_DIR}/runs/{view.run_id}"
    blocks: list[Block] = []
    if view.record is not None:
        blocks.append(Block(f"== run {view.run_id}: {view.record.get('status')} ==",
                            json.dumps(view.record, indent=2, ensure_ascii=False), "record"))
    else:
        blocks.append(Block(f"== run {view.run_id} ==", view.record_problem or "", "note"))
    if view.patch is not None:
        text = view.patch.decode("utf-8", "replace").rstrip("\n")
        blocks.append(Block(f"== candidate patch ({rel}/candidate.patch) ==", text, "patch"))
    else:
        blocks.append(Block("== no candidate patch ==", "", "note"))
    for log in view.logs():
        kept, cut = tail_lines(log, lines)
        if cut:
            what = f"last {len(kept)} line{'s' * (len(kept) != 1)}"
        else:
            what = f"{len(kept)} line{'s' * (len(kept) != 1)}" if kept else "empty"
        blocks.append(Block(f"== {log.name}: {what} ({rel}/{log.name}) ==", "\n".join(kept),
                            "log"))
    return blocks


def _stdout_isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _print_rich(*renderables: Any) -> None:
    from rich.console import Console

    console = Console(file=sys.stdout, force_terminal=True,
                      highlight=False, soft_wrap=True)
    for item in renderables:
        console.print(item)


PATCH_STYLES = (("+++", "bold"), ("---", "bold"), ("diff ", "bold"), ("@@", "cyan"),
                ("+", "green"), ("-", "red"))


def _patch_text(patch: str) -> Any:
    from rich.text import Text

    text = Text()
    for line in patch.splitlines(keepends=True):
        style = next((s for start, s in PATCH_STYLES if line.startswith(start)), "")
        text.append(line, style=style)
    text.rstrip()
    return text


def _rich_block(block: Block) -> Any:
    from rich.console import Group
    from rich.text import Text

    heading = Text(block.heading, style="bold magenta")
    if block.kind == "patch":
        body: Any = _patch_text(block.body)
    elif block.kind == "record":
        from rich.json import JSON

        body = JSON(block.body)
    else:
        body = Text(block.body, style="dim" if block.kind == "note" else "")
    return Group(heading, body, Text(""))
