"""``loopengine results``: the records of work/results.jsonl, as a table or JSON lines."""

from __future__ import annotations

import json

import pytest
from cli_support import invoke, run_ok, table
from conftest import Repo, default_task

COLUMNS = ("run", "status", "score", "baseline", "diff", "reason")


@pytest.fixture
def three(repo: Repo) -> list[dict]:
    """A keep, a discard by a rule, and a crash."""
    keep = run_ok(repo)
    repo.write_task(default_task(mutator__command="echo x >> ../../README.md"))
    repo.commit("mutator touching a non-artifact")
    discard = run_ok(repo)
    repo.write_task(default_task(runner__command="exit 3"))
    repo.commit("failing runner")
    crash = run_ok(repo)
    assert [r["status"] for r in (keep, discard, crash)] == ["keep", "discard", "crash"]
    return [keep, discard, crash]


def row(rec: dict) -> list[str]:
    score = "-" if rec["candidate_score"] is None else str(rec["candidate_score"])
    base = "-" if rec["baseline_score"] is None else str(rec["baseline_score"])
    return [rec["run_id"], rec["status"], score, base, rec["diff_summary"] or "-", rec["reason"]]


def test_results_is_a_table_of_every_record(repo: Repo, three: list[dict]) -> None:
    result = invoke("results", "--repo", str(repo.path))
    assert result.exit_code == 0
    assert result.stdout == table(COLUMNS, [row(r) for r in three])
    assert result.stderr == ""
    keep, discard, crash = three
    # The first keep was held against its baseline, measured in the same run.
    assert row(keep)[2:5] == ["2.0", "1.0", "1 file changed, 1 insertion(+), 0 deletions(-)"]
    assert row(discard)[1:3] == ["discard", "-"]
    # The runner changed, so the baseline is measured again first: it fails there.
    assert row(crash)[5] == ("runner exited with status 3 (the baseline's own evaluation "
                             "failed: the artifacts as they are in the main tree, measured "
                             "before the candidate)")


def test_results_json_prints_the_records_as_stored(repo: Repo, three: list[dict]) -> None:
    result = invoke("results", "--json", "--repo", str(repo.path))
    stored = (repo.path / "work/results.jsonl").read_text().splitlines()
    assert result.stdout.splitlines() == stored
    assert [json.loads(line) for line in stored] == three


def test_task_and_last_select_records(repo: Repo, three: list[dict]) -> None:
    def ids(*args: str) -> list[str]:
        out = invoke("results", "--json", "--repo", str(repo.path), *args).stdout
        return [json.loads(line)["run_id"] for line in out.splitlines()]

    every = [r["run_id"] for r in three]
    assert ids("--last", "2") == every[1:]
    assert ids("--last", "10") == every
    assert ids("--task", "demo", "--last", "1") == every[2:]
    assert ids("--task", "other") == []
    bad = invoke("results", "--last", "0", "--repo", str(repo.path))
    assert bad.exit_code == 2 and "--last" in bad.stderr


def test_damaged_lines_are_skipped_and_counted(repo: Repo, three: list[dict]) -> None:
    path = repo.path / "work/results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[1], '["a list"]', lines[2][:40]])
                    + "\n")
    result = invoke("results", "--json", cwd=repo.path)
    assert result.exit_code == 0
    assert result.stderr == "skipped 3 damaged lines in work/results.jsonl\n"
    assert [json.loads(line) for line in result.stdout.splitlines()] == three[:2]
    path.write_text(lines[0] + "\n{\n")
    one = invoke("results", cwd=repo.path)
    assert one.stderr == "skipped 1 damaged line in work/results.jsonl\n"
    assert one.stdout == table(COLUMNS, [row(three[0])])


def test_results_path_option_is_relative_to_the_current_directory(repo: Repo,
                                                                 three: list[dict]) -> None:
    elsewhere = repo.path / "copy.jsonl"
    elsewhere.write_text((repo.path / "work/results.jsonl").read_text().splitlines()[0] + "\n")
    result = invoke("results", "--json", "--results", "../../copy.jsonl",
                    cwd=repo.path / "tasks" / "demo")
    assert [json.loads(line) for line in result.stdout.splitlines()] == three[:1]
    missing = invoke("results", "--results", "nope.jsonl", cwd=repo.path)
    assert missing.exit_code == 2 and "nope.jsonl" in missing.stderr


def test_no_results_yet_is_an_empty_table(repo: Repo) -> None:
    result = invoke("results", "--repo", str(repo.path))
    assert (result.exit_code, result.stdout, result.stderr) == (0, table(COLUMNS, []), "")
    assert invoke("results", "--json", "--repo", str(repo.path)).stdout == ""


def test_a_reason_with_newlines_stays_on_its_row(repo: Repo) -> None:
    rec = {"run_id": "r1", "status": "crash", "reason": "two\nlines\tand a tab",
           "candidate_score": None, "baseline_score": 1.5, "diff_summary": ""}
    (repo.path / "work").mkdir()
    (repo.path / "work/results.jsonl").write_text(json.dumps(rec) + "\n")
    out = invoke("results", "--repo", str(repo.path)).stdout
    assert out == table(COLUMNS, [["r1", "crash", "-", "1.5", "-", "two lines and a tab"]])
