"""The report's HTML: one file, its style inline, its charts inline SVG, no script."""

from __future__ import annotations

import html

from loopengine.report.data import Campaign

STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2330; background: #f5f6f8; }
header { padding: 20px 32px 14px; background: #1d2330; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
header p { margin: 0; color: #b9c0cc; font-size: 13px; }
main { padding: 8px 32px 40px; max-width: 1280px; }
nav { margin: 16px 0 4px; font-size: 13px; color: #5b6474; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
section.task { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px;
               padding: 18px 22px; margin: 18px 0; }
section.task h2 { margin: 0 0 2px; font-size: 18px; }
.sub { color: #5b6474; font-size: 12.5px; margin-bottom: 12px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0 14px; }
.card { flex: 1 1 140px; border: 1px solid #e1e4ea; border-radius: 6px; padding: 8px 12px;
        background: #fafbfc; }
.card .label { font-size: 11.5px; text-transform: uppercase; letter-spacing: .04em;
               color: #5b6474; }
.card .value { font-size: 20px; font-weight: 600; white-space: nowrap; }
.card .note { font-size: 12px; color: #5b6474; }
.card.keep .value { color: #1e7a1e; }
.card.crash .value { color: #b3261e; }
.chart svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin-top: 8px; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid #eceef2;
         vertical-align: top; }
th { white-space: nowrap; font-size: 11.5px; text-transform: uppercase; letter-spacing: .04em;
     color: #5b6474; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.mono { white-space: nowrap; }
td.mono, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
                font-size: 12.5px; }
.up { color: #1e7a1e; } .down { color: #b3261e; }
h3 { font-size: 14px; margin: 16px 0 0; }
.empty { color: #5b6474; font-style: italic; }
footer { color: #8a93a3; font-size: 12px; padding: 0 32px 24px; }
"""


def render(title: str, subtitle: str, campaigns: list[Campaign], charts: list[str]) -> str:
    nav = " ".join(f'<a href="#task-{_e(c.task_id)}">{_e(c.task_id)}</a>' for c in campaigns)
    body = "\n".join(_section(c, chart) for c, chart in zip(campaigns, charts, strict=True))
    if not campaigns:
        body = '<p class="empty">No tasks yet: no task file under tasks/ and no records.</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header>
<main>
<nav>{nav}</nav>
{body}
</main>
<footer>Green: keeps; grey: discards; red: crashes (one marker per kind, drawn under the
axis when the run has no score); blue: the best score so far; bars: the confidence interval
of the candidate where it was measured; dashed violet: the evaluation fingerprint changed.
</footer>
</body>
</html>
"""


def _section(c: Campaign, chart: str) -> str:
    when = ""
    if c.first_started:
        when = f" &middot; {_e(c.first_started)} to {_e(c.last_started or '')}"
    better = "lower is better" if c.direction == "minimize" else "higher is better"
    return f"""<section class="task" id="task-{_e(c.task_id)}">
<h2>{_e(c.task_id)}</h2>
<div class="sub">{c.runs} run{'s' * (c.runs != 1)} &middot; {better}{when}</div>
{_cards(c)}
<div class="chart">{chart}</div>
<h3>Keeps</h3>
{_keeps(c)}
</section>"""


def _cards(c: Campaign) -> str:
    change = ""
    if c.start_score is not None and c.best_score is not None:
        delta = c.best_score - c.start_score
        if c.start_score != 0:
            change = f"{delta:+.4g} ({delta / abs(c.start_score):+.1%})"
        else:
            change = f"{delta:+.4g}"
    crash_note = ", ".join(f"{kind} {n}" for kind, n in c.crashes.items()) or "none"
    cards = [
        ("score", f"{_num(c.start_score)} &rarr; {_num(c.best_score)}",
         change or "start &rarr; best", ""),
        ("runs", str(c.runs), f"{c.discards} discard{'s' * (c.discards != 1)}", ""),
        ("keeps", str(len(c.keeps)), _rate(len(c.keeps), c.runs), "keep"),
        ("crashes", str(c.crash_count), _e(crash_note), "crash" if c.crash_count else ""),
        ("wall time", _duration(c.wall_seconds), "all runs together", ""),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card {cls}"><div class="label">{label}</div>'
        f'<div class="value">{value}</div><div class="note">{note}</div></div>'
        for label, value, note, cls in cards) + "</div>"


def _keeps(c: Campaign) -> str:
    if not c.keeps:
        return '<p class="empty">No keep yet.</p>'
    rows = []
    for k in reversed(c.keeps):
        delta = "" if k.delta is None else f"{k.delta:+.6g}"
        good = k.delta is not None and (k.delta < 0 if c.direction == "minimize" else k.delta > 0)
        cls = "up" if good else "down" if delta and k.delta != 0 else ""
        rows.append(
            f"<tr><td class=\"num\">{k.index}</td>"
            f"<td class=\"mono\" title=\"{_e(k.commit or '')}\">{_e((k.commit or '-')[:12])}</td>"
            f"<td class=\"mono\">{_e(k.run_id)}</td>"
            f"<td class=\"num\">{_num(k.score)}</td>"
            f"<td class=\"num {cls}\">{delta or '-'}</td>"
            f"<td>{_e(k.reason)}</td></tr>")
    return ("<table><thead><tr><th>run #</th><th>commit</th><th>run id</th><th>score</th>"
            "<th>delta</th><th>reason</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _num(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:.6g}"


def _rate(part: int, whole: int) -> str:
    return f"{part / whole:.0%} of runs" if whole else ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
