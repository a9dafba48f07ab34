"""``loopengine report``: one HTML file, readable offline, looked at in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, default_task

NOTES = "tasks/demo/notes.md"
KEEP_RGB = (0x2C, 0xA0, 0x2C)
CRASH_RGB = (0xD6, 0x27, 0x28)
DISCARD_RGB = (0xA6, 0xA6, 0xA6)


def propose(repo: Repo, tmp_path: Path, text: str, name: str) -> Path:
    before = repo.read(NOTES)
    repo.write(NOTES, text)
    diff = repo.git("diff", "--", NOTES)
    repo.write(NOTES, before)
    path = tmp_path / f"{name}.diff"
    path.write_text(diff)
    return path


@pytest.fixture
def campaign(repo: Repo, tmp_path: Path) -> list[dict[str, Any]]:
    """Keeps, discards, a mutator and a runner crash, repeats (so intervals), and an
    evaluation that changes half-way."""
    repo.write_task(default_task(runner__command='test -z "$FAIL_RUNNER"',
                                 isolation={"env": ["FAIL_RUNNER"]},
                                 policy__repeats=2))
    repo.commit("task")
    lines = ["first"]
    records = []

    def run(text: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        patch = propose(repo, tmp_path, text, f"p{len(records)}")
        record = repo.run("--patch", str(patch), env=env).record
        records.append(record)
        return record

    for word in ("second", "third"):
        lines.append(word)
        run("\n".join(lines) + "\n")
    run("first\n")  # fewer lines: a discard
    bad = tmp_path / "bad.diff"
    bad.write_text(f"--- a/{NOTES}\n+++ b/{NOTES}\n@@ -1 +1 @@\n-not there\n+x\n")
    records.append(repo.run("--patch", str(bad)).record)
    run("\n".join([*lines, "x"]) + "\n", env={"FAIL_RUNNER": "1"})
    repo.write("README.md", "the evaluation changed\n")
    repo.commit("readme: a file that evaluates")
    lines.append("fourth")
    run("\n".join(lines) + "\n")
    statuses = [r["status"] for r in records]
    assert statuses == ["keep", "keep", "discard", "crash", "crash", "keep"], [
        r["reason"] for r in records]
    return records


def report(repo: Repo, *args: str) -> Any:
    result = repo.run(*args, command="report")
    assert result.code == 0, result.stderr
    return result


def test_report_writes_one_self_contained_file(repo: Repo,
                                               campaign: list[dict[str, Any]]) -> None:
    result = report(repo)
    page = repo.path / "work/report.html"
    assert str(page) in result.stdout
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no script, no stylesheet link, no image or font from elsewhere.
    for forbidden in ("<script", "<link", "<img", "<iframe", "@import", "src=", "url(http"):
        assert forbidden not in text
    assert not re.search(r'(href|src)="(https?:)?//', text)
    # The chart is inline SVG with every series the issue names.
    assert text.count("<svg") == 1
    for gid in ("keeps", "discards", "crashes-mutator", "crashes-runner", "best-so-far",
                "intervals"):
        assert f'id="cdemo-{gid}"' in text, gid
    changed = 6  # the first run under the new fingerprint
    assert campaign[-1]["fingerprint"] != campaign[0]["fingerprint"]
    assert f'id="cdemo-evaluation-changed-{changed}"' in text
    # Cards and the table of keeps.
    keeps = [r for r in campaign if r["status"] == "keep"]
    for keep in keeps:
        assert keep["commit"][:12] in text and keep["run_id"] in text
    first = campaign[0]
    start = first["baseline_score"] if first["baseline_score"] is not None else 2.0
    assert f"{start:g} &rarr; 4" in text  # start -> best
    assert "mutator 1, runner 1" in text
    assert text.index(keeps[-1]["run_id"]) < text.index(keeps[0]["run_id"])  # newest first


def test_report_json_and_out_and_task_filter(repo: Repo, tmp_path: Path,
                                             campaign: list[dict[str, Any]]) -> None:
    repo.write_task(default_task(id="other"), rel="tasks/other/task.yaml")
    out = tmp_path / "elsewhere" / "r.html"
    data = json.loads(report(repo, "--out", str(out), "--json", "--task", "demo").stdout)
    assert data["path"] == str(out.resolve()) and out.is_file()
    [task] = data["tasks"]
    assert task == {"task_id": "demo", "runs": 6, "keeps": 3, "discards": 1, "crashes": 2,
                    "crash_kinds": {"mutator": 1, "runner": 1},
                    "start_score": task["start_score"], "best_score": 4.0,
                    "wall_seconds": task["wall_seconds"]}
    # The start: the first baseline, or (when the first run had none) its keep's score.
    assert task["start_score"] == (campaign[0]["baseline_score"] or 2.0)
    assert not (repo.path / "work/report.html").exists()
    both = json.loads(report(repo, "--json").stdout)
    assert [t["task_id"] for t in both["tasks"]] == ["demo", "other"]
    missing = repo.run("--task", "nope", command="report")
    assert missing.code == 1 and "no task 'nope'" in missing.stderr


def test_report_of_a_repository_with_no_runs(repo: Repo) -> None:
    report(repo)
    text = (repo.path / "work/report.html").read_text()
    assert "No keep yet." in text and "<svg" in text


# ---------------------------------------------------------------------------
# As a user sees it: headless Chromium, offline


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True,
                       env=env, check=False)
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("no Chromium, and it cannot be installed here")


def screenshot(page: Path, tmp_path: Path, size: str = "1280,1000") -> Any:
    from PIL import Image

    png = tmp_path / "shot.png"
    profile = tmp_path / "chromium-profile"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
           f"--window-size={size}", "--hide-scrollbars",
           # Offline: any host name fails to resolve, so a fetched asset could not load.
           "--host-resolver-rules=MAP * ~NOTFOUND", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert png.is_file(), proc.stderr[-3000:]
    return Image.open(png).convert("RGB")


def count(image: Any, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels have this colour (each channel within ``tolerance``)."""
    import numpy as np

    pixels = np.asarray(image, dtype=np.int16)
    return int((np.abs(pixels - np.array(rgb, dtype=np.int16)) <= tolerance).all(axis=2).sum())


def test_the_chart_shows_in_a_headless_browser(repo: Repo, tmp_path: Path,
                                               campaign: list[dict[str, Any]]) -> None:
    report(repo)
    shot = screenshot(repo.path / "work/report.html", tmp_path)
    shot.save(tmp_path / "kept-for-a-look.png")
    # Three keep markers (and their legend swatch), discards, crash markers: each a few
    # dozen pixels of its own colour, which only the rendered chart has.
    assert count(shot, KEEP_RGB) > 4 * 40
    assert count(shot, DISCARD_RGB) > 40
    assert count(shot, CRASH_RGB, tolerance=20) > 2 * 20
    # The chart area is not blank: many non-white pixels inside it.
    width, height = shot.size
    chart = shot.crop((0, 250, width, min(height, 750)))
    assert chart.size[0] * chart.size[1] - count(chart, (255, 255, 255), 0) > 10_000


def test_an_empty_page_has_no_chart_colours(repo: Repo, tmp_path: Path) -> None:
    """The counter-check of the test above: no runs, no keep markers."""
    report(repo)
    shot = screenshot(repo.path / "work/report.html", tmp_path)
    assert count(shot, KEEP_RGB) < 20


def test_report_does_not_touch_the_tree_or_git(repo: Repo,
                                               campaign: list[dict[str, Any]]) -> None:
    before = (repo.git("status", "--porcelain", "--ignored"),
              repo.git("for-each-ref"), repo.git("rev-parse", "HEAD"))
    report(repo)
    after = (repo.git("status", "--porcelain", "--ignored"),
             repo.git("for-each-ref"), repo.git("rev-parse", "HEAD"))
    assert after == before  # work/ is ignored; the report lives there


def test_a_minimizing_task_draws_its_best_going_down(repo: Repo, tmp_path: Path) -> None:
    repo.write_task(default_task(objective__direction="minimize",
                                 scorer__command=f"{PY} {BIN}/score_lines.py notes.md"))
    repo.commit("minimize")
    repo.write(NOTES, "first\nsecond\nthird\n")
    repo.commit("three lines")
    texts = ["first\nsecond\nthird\nx\n", "first\nsecond\n", "first\n"]
    records = [repo.run("--patch", str(propose(repo, tmp_path, text, f"m{i}"))).record
               for i, text in enumerate(texts)]
    assert [r["status"] for r in records][1:] == ["keep", "keep"], [r["reason"] for r in records]
    data = json.loads(report(repo, "--json").stdout)["tasks"][0]
    # The first run either measured the baseline (3 lines) or, with none, kept 4 lines.
    assert data["start_score"] == (records[0]["baseline_score"] or 4.0)
    assert data["best_score"] == 1.0
