"""``loopengine show RUN_ID``: record, candidate patch and step logs of one run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from cli_support import invoke, run_ok
from conftest import BIN, PY, Repo, default_task

from loopengine.cli import main


def run_folder(repo: Repo, run_id: str) -> Path:
    return repo.path / "work" / "runs" / run_id


def test_show_prints_record_patch_and_each_step_log(repo: Repo) -> None:
    rec = run_ok(repo)
    rel = f"work/runs/{rec['run_id']}"
    folder = run_folder(repo, rec["run_id"])
    patch = (folder / "candidate.patch").read_text()
    scorer = (folder / "scorer.log").read_text().splitlines()
    result = invoke("show", rec["run_id"], "--repo", str(repo.path))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"== run {rec['run_id']}: keep ==\n"
        f"{json.dumps(rec, indent=2)}\n\n"
        f"== candidate patch ({rel}/candidate.patch) ==\n"
        f"{patch}\n"
        f"== mutator.log: empty ({rel}/mutator.log) ==\n\n"
        f"== runner.log: empty ({rel}/runner.log) ==\n\n"
        f"== scorer.log: {len(scorer)} lines ({rel}/scorer.log) ==\n"
        + "\n".join(scorer) + "\n"
    )
    assert "+more" in patch


def test_show_accepts_a_unique_prefix_and_finds_the_repo_from_the_cwd(repo: Repo) -> None:
    rec = run_ok(repo)
    prefix = rec["run_id"][:-3]
    by_prefix = invoke("show", prefix, cwd=repo.path / "tasks" / "demo")
    assert by_prefix.exit_code == 0
    assert by_prefix.stdout == invoke("show", rec["run_id"], "--repo", str(repo.path)).stdout


def test_ambiguous_unknown_and_empty_ids_are_clear_errors(repo: Repo) -> None:
    first, second = run_ok(repo), run_ok(repo)
    common = ""
    for a, b in zip(first["run_id"], second["run_id"], strict=True):
        if a != b:
            break
        common += a
    ambiguous = invoke("show", common, "--repo", str(repo.path))
    assert ambiguous.exit_code == 1
    assert ambiguous.stdout == ""
    assert ambiguous.stderr == (
        f"loopengine: run id prefix {common!r} is ambiguous: 2 runs match "
        f"({first['run_id']}, {second['run_id']})\n")
    unknown = invoke("show", "19990101", "--repo", str(repo.path))
    assert (unknown.exit_code, unknown.stdout) == (1, "")
    assert unknown.stderr == "loopengine: no run '19990101' in work/runs\n"
    empty = invoke("show", "", "--repo", str(repo.path))
    assert empty.exit_code == 1
    assert "empty run id" in empty.stderr
    nothing_yet = invoke("show", "x", "--repo", str(repo.path / "tasks"))
    assert nothing_yet.stderr == "loopengine: no run 'x' in work/runs\n"


def test_an_exact_id_wins_over_a_longer_one_it_prefixes(repo: Repo) -> None:
    rec = run_ok(repo)
    folder = run_folder(repo, rec["run_id"])
    shutil.copytree(folder, folder.with_name(rec["run_id"] + "-copy"))
    assert invoke("show", rec["run_id"], "--repo", str(repo.path)).exit_code == 0


def byte_hostile_task(repo: Repo) -> None:
    """A mutator whose change has a CRLF, trailing blanks, Latin-1 and no final newline."""
    repo.write("tools/hostile.py",
               "import sys\n"
               "with open(sys.argv[1], 'ab') as fh:\n"
               "    fh.write(b'caf\\xe9 \\r\\ntab\\there  \\nlast line without newline')\n")
    # The score is the file's size, so the candidate beats its measured baseline.
    size = "import os, json; print(json.dumps({'score': os.path.getsize('notes.md')}))"
    repo.write_task(default_task(mutator__command=f"{PY} ../../tools/hostile.py notes.md",
                                 scorer__command=f'{PY} -c "{size}"'))
    repo.commit("hostile mutator")


def test_show_patch_is_byte_exact_and_git_apply_takes_it(repo: Repo) -> None:
    byte_hostile_task(repo)
    before = (repo.path / "tasks/demo/notes.md").read_bytes()
    rec = run_ok(repo)
    assert rec["status"] == "keep", rec
    after = (repo.path / "tasks/demo/notes.md").read_bytes()
    result = invoke("show", rec["run_id"], "--patch", "--repo", str(repo.path))
    assert result.exit_code == 0
    saved = (run_folder(repo, rec["run_id"]) / "candidate.patch").read_bytes()
    assert result.stdout_bytes == saved
    assert b"\\ No newline at end of file" in saved

    (repo.path / "tasks/demo/notes.md").write_bytes(before)
    proc = subprocess.run(["git", "apply", "-"], cwd=repo.path, input=result.stdout_bytes,
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (repo.path / "tasks/demo/notes.md").read_bytes() == after


def test_show_patch_of_a_run_without_change_is_an_error(repo: Repo) -> None:
    repo.write_task(default_task(mutator__command="true"))
    repo.commit("no-op mutator")
    rec = run_ok(repo)
    assert rec["patch"] is None
    result = invoke("show", rec["run_id"], "--patch", "--repo", str(repo.path))
    assert (result.exit_code, result.stdout_bytes) == (1, b"")
    assert result.stderr == (f"loopengine: run {rec['run_id']} has no candidate patch "
                             "(nothing changed, or the run stopped before validation)\n")
    shown = invoke("show", rec["run_id"], "--repo", str(repo.path)).stdout
    assert "== no candidate patch ==\n" in shown


def test_show_gives_the_end_of_a_long_log(repo: Repo) -> None:
    repo.write_task(default_task(runner__command="seq 1 500; exit 4"))
    repo.commit("failing runner")
    rec = run_ok(repo)
    assert rec["crash_kind"] == "runner"
    rel = f"work/runs/{rec['run_id']}/runner.log"
    out = invoke("show", rec["run_id"], "--lines", "3", "--repo", str(repo.path)).stdout
    assert f"== runner.log: last 3 lines ({rel}) ==\n498\n499\n500\n" in out
    assert "scorer.log" not in out  # the scorer never ran
    default = invoke("show", rec["run_id"], "--repo", str(repo.path)).stdout
    assert f"== runner.log: last 20 lines ({rel}) ==\n" + "\n".join(
        str(n) for n in range(481, 501)) in default


def test_a_run_stopped_before_its_record_still_shows(repo: Repo) -> None:
    rec = run_ok(repo)
    (run_folder(repo, rec["run_id"]) / "record.json").unlink()
    result = invoke("show", rec["run_id"], "--repo", str(repo.path))
    assert result.exit_code == 0
    assert result.stdout.startswith(
        f"== run {rec['run_id']} ==\n"
        "no record.json: the run was stopped before it wrote its record\n\n"
        "== candidate patch")


def test_colour_only_when_asked_or_on_a_terminal(repo: Repo) -> None:
    rec = run_ok(repo)
    args = ("show", rec["run_id"], "--repo", str(repo.path))
    assert "\x1b[" not in invoke(*args).stdout  # CliRunner's stdout is not a terminal
    assert "\x1b[" not in invoke(*args, "--color", "never").stdout
    coloured = invoke(*args, "--color", "always").stdout
    assert "\x1b[32m+more" in coloured  # an added line in green
    patch = invoke(*args, "--patch", "--color", "always").stdout
    assert "\x1b[32m+more" in patch and "== run" not in patch
    bad = invoke(*args, "--color", "sometimes")
    assert bad.exit_code == 2


def test_an_internal_crash_shows_the_traceback_log(repo: Repo) -> None:
    rec = run_ok(repo)
    (run_folder(repo, rec["run_id"]) / "engine.log").write_text("Traceback: boom\n")
    out = invoke("show", rec["run_id"], "--repo", str(repo.path)).stdout
    assert out.endswith(f"== engine.log: 1 line (work/runs/{rec['run_id']}/engine.log) ==\n"
                        "Traceback: boom\n")


def test_show_help_names_every_option() -> None:
    from click.testing import CliRunner

    text = CliRunner().invoke(main, ["show", "--help"]).stdout
    for option in ("--patch", "--repo", "--color", "--lines"):
        assert option in text
    assert BIN.exists()  # the stand-ins the other tests use


def test_show_last_is_the_newest_run_and_a_suffix_names_a_run(repo: Repo) -> None:
    nothing = invoke("show", "last", "--repo", str(repo.path))
    assert (nothing.exit_code, nothing.stdout) == (1, "")
    assert nothing.stderr == "loopengine: no runs yet in work/runs\n"
    first, second = run_ok(repo), run_ok(repo)
    exact = invoke("show", second["run_id"], "--repo", str(repo.path)).stdout
    last = invoke("show", "last", cwd=repo.path / "tasks")
    assert last.exit_code == 0
    assert last.stdout == exact
    # The random tail of a run id is what an agent types: six hex characters.
    for rec in (first, second):
        tail = rec["run_id"].rsplit("-", 1)[1]
        by_suffix = invoke("show", tail, "--repo", str(repo.path))
        assert by_suffix.exit_code == 0, by_suffix.stderr
        assert by_suffix.stdout.startswith(f"== run {rec['run_id']}: ")
        patch = invoke("show", tail[-4:], "--patch", "--repo", str(repo.path))
        assert patch.exit_code == 0
        assert patch.stdout == (repo.path / rec["patch"]).read_text()


def test_an_ambiguous_suffix_is_a_clear_error(repo: Repo) -> None:
    rec = run_ok(repo)
    folder = run_folder(repo, rec["run_id"])
    shutil.copytree(folder, folder.with_name("20000101T000000000000Z-" + rec["run_id"][-6:]))
    tail = rec["run_id"][-6:]
    result = invoke("show", tail, "--repo", str(repo.path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"loopengine: run id suffix {tail!r} is ambiguous: 2 runs")
