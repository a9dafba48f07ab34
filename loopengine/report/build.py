"""Gather the campaigns of a repository and write the report file."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from loopengine.commands.status import all_records, load_tasks
from loopengine.report import chart, page
from loopengine.report.data import Campaign, campaign
from loopengine.results import WORK_DIR, write_atomic

DEFAULT_OUT = f"{WORK_DIR}/report.html"


@dataclass(frozen=True)
class Report:
    path: Path
    campaigns: list[Campaign]
    html: str

    def summary(self) -> dict[str, object]:
        """What ``report`` tells an agent: where the file is and what it shows."""
        return {"path": str(self.path), "tasks": [
            {"task_id": c.task_id, "runs": c.runs, "keeps": len(c.keeps),
             "discards": c.discards, "crashes": c.crash_count, "crash_kinds": c.crashes,
             "start_score": c.start_score, "best_score": c.best_score,
             "wall_seconds": round(c.wall_seconds, 3)} for c in self.campaigns]}


def build(root: Path, task_filter: str | None = None) -> list[Campaign]:
    tasks, _ = load_tasks(root)
    records, _ = all_records(root, tasks.values())
    ids = set(tasks) | {r["task_id"] for r in records if isinstance(r.get("task_id"), str)}
    if task_filter is not None:
        ids &= {task_filter}
    return [campaign(task_id, tasks[task_id].direction if task_id in tasks else "maximize",
                     [r for r in records if r.get("task_id") == task_id])
            for task_id in sorted(ids)]


def write_report(root: Path, task_filter: str | None = None,
                 out: Path | None = None) -> Report:
    campaigns = build(root, task_filter)
    if task_filter is not None and not campaigns:
        from loopengine.commands import CommandError

        raise CommandError(f"no task {task_filter!r} in {root} (no task file, no record)")
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    runs = sum(c.runs for c in campaigns)
    text = page.render(f"loopengine report: {root.name}",
                       f"{root} · {len(campaigns)} task{'s' * (len(campaigns) != 1)} · "
                       f"{runs} run{'s' * (runs != 1)} · generated {now}",
                       campaigns, [chart.svg(c) for c in campaigns])
    path = out if out is not None else root / DEFAULT_OUT
    write_atomic(path, text.encode("utf-8"))
    return Report(path.resolve(), campaigns, text)
