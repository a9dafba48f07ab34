"""A campaign's score per run, drawn by matplotlib as an SVG to inline in the page.

The figure is made without pyplot (no global state, no GUI backend: the SVG canvas
only), and with the text as paths, so the page shows the same chart on any machine.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

from loopengine.report.data import Campaign

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KEEP = "#2ca02c"
DISCARD = "#a6a6a6"
CRASH = "#d62728"
BEST = "#1f5fa8"
INTERVAL = "#7f9fbf"
CHANGE = "#8e44ad"
# One marker per crash kind, so that a person sees which step failed.
CRASH_MARKERS = {"config": "s", "sandbox": "D", "mutator": "v", "runner": "X", "scorer": "P",
                 "timeout": "^", "budget": "<", "interrupted": ">", "internal": "*"}


def svg(c: Campaign, width: float = 10.0, height: float = 4.2) -> str:
    """The chart as an ``<svg>`` element (no XML prolog), ids unique to this task."""
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": f"loopengine-{c.task_id}",
                                "svg.fonttype": "path", "font.size": 9}):
        figure = _figure(c, width, height)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # Several charts share one page: prefix every id so that none clashes.
    prefix = "c" + re.sub(r"[^A-Za-z0-9_-]", "_", c.task_id) + "-"
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'(url\(#|xlink:href="#|href="#)([^")]+)',
                  lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
    return text


def _figure(c: Campaign, width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    scored = [(p, p.score) for p in c.points if p.score is not None]
    values = [score for _, score in scored]
    values += [v for p in c.points if p.interval for v in p.interval]
    if c.start_score is not None:
        values.append(c.start_score)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = (high - low) or max(abs(high), 1.0)
    floor = low - 0.12 * span  # where a crash without a score is drawn

    for status, colour, size, label in (("discard", DISCARD, 28, "discard"),
                                        ("keep", KEEP, 64, "keep")):
        pts = [(p.index, score) for p, score in scored if p.status == status]
        if pts:
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=size, c=colour,
                       edgecolors="white" if status == "keep" else "none", linewidths=0.6,
                       zorder=3 if status == "keep" else 2,
                       label=f"{label} ({len(pts)})").set_gid(f"{status}s")
    bars = [(p.index, score, p.interval) for p, score in scored if p.interval is not None]
    if bars:
        ax.errorbar([x for x, _, _ in bars], [y for _, y, _ in bars],
                    yerr=[[y - bottom for _, y, (bottom, _) in bars],
                          [top - y for _, y, (_, top) in bars]],
                    fmt="none", ecolor=INTERVAL, elinewidth=1, capsize=2, zorder=1,
                    label="confidence interval", gid="intervals")
    for kind, count in c.crashes.items():
        crashed = [p for p in c.points
                   if p.status == "crash" and (p.crash_kind or "unknown") == kind]
        ax.scatter([p.index for p in crashed],
                   [p.score if p.score is not None else floor for p in crashed],
                   marker=CRASH_MARKERS.get(kind, "x"), s=36, c=CRASH, zorder=3,
                   label=f"crash: {kind} ({count})").set_gid(f"crashes-{kind}")
    steps = c.best_so_far()
    if steps:
        xs = [x for x, _ in steps] + [max(len(c.points), steps[-1][0]) + 0.5]
        ys = [y for _, y in steps] + [steps[-1][1]]
        ax.step(xs, ys, where="post", color=BEST, linewidth=1.8, zorder=2,
                label="best so far", gid="best-so-far")
    for n, index in enumerate(c.fingerprint_changes):
        ax.axvline(index - 0.5, color=CHANGE, linestyle="--", linewidth=1.1, zorder=0,
                   label="evaluation changed" if n == 0 else None,
                   gid=f"evaluation-changed-{index}")

    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(len(c.points), 1) + 1)
    ax.set_ylim(floor - 0.08 * span, high + 0.12 * span)
    if any(p.status == "crash" and p.score is None for p in c.points):
        # The crashes with no score sit in a band of their own, under the scores' ticks.
        ax.axhspan(floor - 0.06 * span, floor + 0.06 * span, color="#fbeaea", zorder=0,
                   linewidth=0)
        ax.text(0.1, floor, "no score", color="#b3261e", fontsize=7, va="center")
        ax.set_yticks([t for t in ax.get_yticks() if t >= floor + 0.06 * span])
    ax.set_xlabel("run")
    better = "lower is better" if c.direction == "minimize" else "higher is better"
    ax.set_ylabel(f"score ({better})")
    ax.grid(True, color="#e6e6e6", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if c.points:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no runs yet", transform=ax.transAxes, ha="center", va="center",
                color="#888888")
    return figure
