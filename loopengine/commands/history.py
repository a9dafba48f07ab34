"""``loopengine history``: the keep commits, read back from their trailers, newest first.

The commits are the truth: ``results.jsonl`` can be deleted or damaged, the commits
stay.  They are read with ``git log -z`` and a fixed format through :func:`git.run`, so
the user's configuration (colours, pattern type, signatures, encodings) changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from loopengine import git
from loopengine.commands import CommandError
from loopengine.commands.table import print_json_lines, print_table

TRAILERS = {
    "Loopengine-Task": "task",
    "Loopengine-Run": "run",
    "Loopengine-Score": "score",
    "Loopengine-Baseline": "baseline",
}
SEP = "\x1f"
FORMAT = f"%H{SEP}%cI{SEP}%(trailers:only,unfold,separator=%x1f)"


@dataclass(frozen=True)
class Keep:
    commit: str
    date: str
    task: str
    run: str
    score: float | None
    baseline: float | None
    delta: float | None
    score_text: str
    baseline_text: str

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        del data["score_text"], data["baseline_text"]
        return data


def read_keeps(root: Path, task: str | None = None) -> list[Keep]:
    info = git.repo_info(root)
    if not info.is_git:
        raise CommandError(f"{root} is not a git repository: history reads the keep "
                           "commits' trailers (use `loopengine results` for the records)")
    if info.head is None:
        return []
    data = git.run(
        info.ctx, "log", "-z", f"--format={FORMAT}", "--encoding=UTF-8",
        "--no-show-signature", "--basic-regexp", "--grep=^Loopengine-Run: ",
        "HEAD", "--",
    ).stdout.decode("utf-8", "replace")
    keeps = [k for k in (_parse(entry) for entry in data.split("\0") if entry) if k]
    return [k for k in keeps if task is None or k.task == task]


def _parse(entry: str) -> Keep | None:
    commit, date, *trailers = entry.strip("\n").split(SEP)
    found: dict[str, str] = {}
    for trailer in trailers:
        key, sep, value = trailer.partition(":")
        # Trailer keys are case-insensitive to git; the engine writes them as above.
        name = next((v for k, v in TRAILERS.items() if k.lower() == key.strip().lower()), None)
        if sep and name:
            found[name] = value.strip()
    if "task" not in found or "run" not in found:
        return None  # a commit that mentions the trailer but was not made by a keep
    score, baseline = _number(found.get("score")), _number(found.get("baseline"))
    delta = None if score is None or baseline is None else float(f"{score - baseline:.12g}")
    return Keep(commit=commit, date=date, task=found["task"], run=found["run"], score=score,
                baseline=baseline, delta=delta, score_text=found.get("score", ""),
                baseline_text=found.get("baseline", ""))


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


COLUMNS = ("commit", "date", "task", "score", "baseline", "delta")


def history(root: Path, task: str | None, as_json: bool) -> None:
    keeps = read_keeps(root, task)
    if as_json:
        print_json_lines(k.to_json() for k in keeps)
        return
    print_table(COLUMNS, ([k.commit[:12], k.date, k.task, k.score_text or "-",
                          k.baseline_text or "-", "-" if k.delta is None else f"{k.delta:+.6g}"]
                         for k in keeps))
