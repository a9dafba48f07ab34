"""Trustworthy verdicts (contract section 8): repeats, interleaved baselines, the evaluation
fingerprint, evaluation integrity, ``calibrate`` and ``verify``.

The artifact ``tasks/demo/notes.md`` holds a ``score: V`` line.  The scorer,
``tests/bin/noisy_score.py``, prints V plus reproducible noise (seeded by a call counter)
and logs each V it saw, which tells whose artifact -- baseline or candidate -- was
measured, in order.  The mutator copies a proposal written outside the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, assert_guarantees, default_task, snapshot

NOTES = "tasks/demo/notes.md"
STORE = "work/baselines/demo.json"
SECTION_8 = ("candidate_scores", "baseline_scores", "improvement", "interval", "fingerprint",
             "baseline_source")


class Loop:
    """Propose an artifact content, run one iteration under the guarantees, get the record."""

    def __init__(self, repo: Repo, guarded: Any, tmp_path: Path) -> None:
        self.repo = repo
        self.guarded = guarded
        self.plan = tmp_path / "proposal.md"
        self.state = tmp_path / "scorer-state"

    def setup(self, start: str = "score: 1\n", sigma: float = 0.0, offsets: str = "0",
              scorer: str | None = None, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "mutator__command": f"{PY} {BIN}/mutate.py copy {self.plan} notes.md",
            "scorer__command": scorer or self.scorer(sigma, offsets),
            # The scorer keeps its state (and what it measured) where the test reads it.
            "isolation": {"write": [str(self.state)]},
        }
        settings.update(overrides)
        self.repo.write(NOTES, start)
        self.repo.write_task(default_task(**settings))
        self.repo.commit("task")

    def scorer(self, sigma: float = 0.0, offsets: str = "0",
               script: str = f"{BIN}/noisy_score.py") -> str:
        return f"{PY} {script} notes.md {self.state} {sigma} {offsets}"

    def propose(self, text: str, code: int = 0) -> dict[str, Any]:
        self.plan.write_text(text)
        result = self.guarded()
        assert result.code == code, result.stderr
        return result.record

    def seen(self) -> list[str]:
        """The values the scorer measured since the last call, in order."""
        path = self.state / "seen"
        if not path.exists():
            return []
        lines = path.read_text().split()
        path.unlink()
        return lines

    def stored(self) -> dict[str, Any]:
        return json.loads((self.repo.path / STORE).read_text())


@pytest.fixture
def loop(repo: Repo, guarded: Any, tmp_path: Path) -> Loop:
    return Loop(repo, guarded, tmp_path)


# ---------------------------------------------------------------------------
# The defaults: one measurement, the stored baseline, and the new fields on every record


def test_defaults_measure_once_and_records_carry_the_section_8_fields(loop: Loop) -> None:
    loop.setup()
    # No change and nothing stored: the one run measures the baseline.
    first = loop.propose("score: 1\n")
    assert (first["status"], first["baseline_source"]) == ("discard", "remeasured")
    assert first["candidate_scores"] == [1.0] and first["baseline_scores"] == [1.0]
    assert first["improvement"] == 0.0 and first["interval"] is None
    assert first["fingerprint"].startswith("sha256:") and first["runs"] == 1
    assert loop.seen() == ["1"]
    second = loop.propose("score: 3\n")
    assert second["status"] == "keep"
    assert second["reason"] == ("score 3.0 beats baseline 1.0 by 2 "
                                "(higher is better, min_improvement 0)")
    assert second["baseline_source"] == "stored"
    assert second["candidate_scores"] == [3.0] and second["baseline_scores"] == [1.0]
    assert second["improvement"] == 2.0 and second["interval"] is None
    assert second["fingerprint"] == first["fingerprint"] and second["runs"] == 1
    assert loop.seen() == ["3"]  # the stored baseline is not measured again
    assert loop.stored()["fingerprint"] == first["fingerprint"]
    # A discard by a rule, before anything is measured, has the fields too.
    rule = loop.propose("score: 4\n" + "x\n" * 20)
    assert rule["status"] == "discard" and rule["violations"]
    assert all(key in rule for key in SECTION_8)
    assert rule["candidate_scores"] == [] and rule["baseline_source"] == "stored"
    assert rule["runs"] == 0


# ---------------------------------------------------------------------------
# Repeats: sequential, stops as soon as the verdict is clear


def test_a_deterministic_scorer_stops_after_the_minimum_runs(loop: Loop) -> None:
    loop.setup(policy__repeats=5)
    # No change, nothing stored: the baseline, with the 3 runs a first candidate run needs.
    first = loop.propose("score: 1\n")
    assert first["status"] == "discard" and first["candidate_scores"] == [1.0] * 3
    assert loop.stored()["scores"] == [1.0] * 3
    better = loop.propose("score: 2\n")
    # One run could only discard; a keep needs the candidate's second run.  Before it,
    # the baseline grows to 3 runs per candidate run (capped at 1.5 x repeats = 7).
    assert better["status"] == "keep", better["reason"]
    assert better["candidate_scores"] == [2.0, 2.0]
    assert better["baseline_scores"] == [1.0] * 6 and better["baseline_source"] == "stored"
    assert better["improvement"] == 1.0 and better["interval"] == [1.0, 1.0]
    assert better["runs"] == 5
    assert loop.seen() == ["1"] * 3 + ["2", "1", "1", "1", "2"]
    # The keep's own scores never become the baseline's measurements (winner's curse):
    # the next iteration measures the baseline afresh, before its candidate.
    assert loop.stored()["score"] == 2.0 and loop.stored()["scores"] == []
    worse = loop.propose("score: 1.5\n")
    assert worse["status"] == "discard" and worse["baseline_source"] == "remeasured"
    assert loop.seen() == ["2", "2", "2", "1.5"] and worse["runs"] == 4
    assert loop.stored()["scores"] == [2.0, 2.0, 2.0]
    # With the baseline's noise known (zero), a worse candidate costs one run.
    again = loop.propose("score: 0.5\n")
    assert again["status"] == "discard" and again["baseline_source"] == "stored"
    assert loop.seen() == ["0.5"] and again["runs"] == 1
    assert again["candidate_scores"] == [0.5] and again["baseline_scores"] == [2.0] * 3
    assert "does not beat it" in again["reason"]


def test_a_noisy_close_call_is_an_inconclusive_discard(loop: Loop, repo: Repo) -> None:
    # Calls 0-2 measure the first baseline: 10, 11, 9.  Then C B C C (the baseline grows
    # to 4 runs, 1.5 x repeats): the candidate gets 10.8, 9.8, 10.6, the baseline 10.
    loop.setup("score: 10\n", offsets="0,1,-1,0.5,0,-0.5,0.3", policy__repeats=3)
    loop.propose("score: 10\n")
    head = repo.git("rev-parse", "HEAD")
    close = loop.propose("score: 10.3\n")
    assert close["status"] == "discard"
    assert close["reason"].startswith("inconclusive: ")
    assert close["candidate_scores"] == pytest.approx([10.8, 9.8, 10.6])
    assert close["baseline_scores"] == [10.0, 11.0, 9.0, 10.0]
    low, high = close["interval"]
    assert low <= 0.0 < high and low < close["improvement"] < high
    assert f"improvement {close['improvement']:.6g}" in close["reason"]
    assert f"interval [{low:.6g}, {high:.6g}]" in close["reason"]
    assert repo.git("rev-parse", "HEAD") == head and repo.read(NOTES) == "score: 10\n"


def test_a_clearly_worse_candidate_costs_one_run(loop: Loop) -> None:
    loop.setup("score: 10\n", sigma=0.1, policy__repeats=6)
    loop.propose("score: 10\n")
    loop.seen()
    bad = loop.propose("score: 8\n")
    assert bad["status"] == "discard" and len(bad["candidate_scores"]) == 1
    assert bad["reason"].startswith("not promising: ")
    assert loop.seen() == ["8"]  # the stored baseline already has the 3 runs it needs


def test_constraints_under_repeats_are_judged_on_the_mean(loop: Loop) -> None:
    # The metric k is the scorer's call number.  One run over the bound (k = 5 > 4.5) does
    # not end the measuring: the mean of the candidate's runs (3 and 5) is what counts.
    loop.setup(policy__repeats=3, constraints=[{"metric": "k", "max": 4.5}])
    loop.propose("score: 1\n")  # calls 0, 1, 2: the baseline
    kept = loop.propose("score: 5\n")  # C 3, B 4, C 5
    assert kept["status"] == "keep", kept["reason"]
    assert kept["candidate_scores"] == [5.0, 5.0] and kept["metrics"] == {"k": 4.0}
    # Over the bound on average: a discard that says it is the mean.
    over = loop.propose("score: 6\n")  # B 6, 7, 8, C 9, B, C ...
    assert over["status"] == "discard"
    assert over["reason"].startswith("constraint violated: k = ")
    assert over["violations"][0]["actual"] == over["metrics"]["k"] > 4.5


def test_minimize_with_repeats(loop: Loop) -> None:
    loop.setup("score: 5\n", policy__repeats=3, objective__direction="minimize")
    loop.propose("score: 5\n")
    lower = loop.propose("score: 4\n")
    assert lower["status"] == "keep" and lower["improvement"] == 1.0
    assert "lower is better" in lower["reason"]


# ---------------------------------------------------------------------------
# remeasure_baseline: B C B C in one sandbox


def test_remeasure_baseline_interleaves(loop: Loop, repo: Repo) -> None:
    loop.setup(policy__repeats=3, policy__remeasure_baseline=True)
    first = loop.propose("score: 1\n")  # no change, nothing stored: measures the baseline
    assert first["status"] == "discard" and first["reason"] == "candidate has no change"
    assert first["baseline_source"] == "remeasured" and first["baseline_scores"] == [1.0]
    assert loop.seen() == ["1"]
    better = loop.propose("score: 2\n")
    assert better["status"] == "keep" and better["baseline_source"] == "remeasured"
    assert loop.seen() == ["1", "2", "1", "2"]  # B C B C, then the verdict is clear
    assert better["baseline_scores"] == [1.0, 1.0] and better["candidate_scores"] == [2.0, 2.0]
    assert better["baseline_score"] == 1.0 and better["candidate_score"] == 2.0
    assert repo.read(NOTES) == "score: 2\n"
    assert repo.log()[0] == "loopengine(demo): keep 2.0"


def test_remeasure_without_a_stored_baseline_compares(loop: Loop, repo: Repo) -> None:
    loop.setup(policy__remeasure_baseline=True)  # repeats 1: one B, one C
    worse = loop.propose("score: 0\n")
    assert worse["status"] == "discard" and worse["baseline_source"] == "remeasured"
    assert worse["baseline_score"] == 1.0 and loop.seen() == ["1", "0"]
    assert loop.stored()["scores"] == [1.0]  # the fresh measurement is stored
    assert repo.read(NOTES) == "score: 1\n"


def test_a_runner_that_edits_the_artifact_while_the_baseline_is_measured(loop: Loop) -> None:
    loop.setup(policy__remeasure_baseline=True,
               runner__command=f"{PY} {BIN}/mutate.py append notes.md extra")
    rec = loop.propose("score: 2\n")
    assert rec["status"] == "discard"
    assert rec["reason"].startswith("an artifact changed after validation")
    assert "baseline" in rec["reason"]


# ---------------------------------------------------------------------------
# The evaluation fingerprint


def scorer_in_repo(loop: Loop, repo: Repo, factor: str = "") -> str:
    """A copy of the scorer inside the repository, so that it is fingerprinted."""
    text = (BIN / "noisy_score.py").read_text()
    if factor:
        text = text.replace("print(json.dumps({\"score\": value",
                            f"value = value * {factor}\nprint(json.dumps({{\"score\": value")
    repo.write("eval/score.py", text)
    return loop.scorer(script="../../eval/score.py")


def test_a_changed_scorer_makes_the_baseline_stale(loop: Loop, repo: Repo) -> None:
    loop.setup(scorer=scorer_in_repo(loop, repo))
    first = loop.propose("score: 1\n")
    assert first["status"] == "discard" and loop.stored()["score"] == 1.0
    scorer_in_repo(loop, repo, factor="10")  # uncommitted: the sandbox has it too
    second = loop.propose("score: 1.5\n")
    # Never held against 1.0, measured by the old scorer: the baseline is measured again.
    assert second["baseline_source"] == "remeasured"
    assert second["fingerprint"] != first["fingerprint"]
    assert second["baseline_score"] == 10.0 and second["candidate_score"] == 15.0
    assert second["status"] == "keep"
    assert loop.seen() == ["1", "1", "1.5"]
    assert loop.stored()["fingerprint"] == second["fingerprint"]
    third = loop.propose("score: 2\n")
    assert third["baseline_source"] == "stored" and third["baseline_score"] == 15.0


def test_a_stale_baseline_is_replaced_even_by_a_discard(loop: Loop, repo: Repo) -> None:
    loop.setup(scorer=scorer_in_repo(loop, repo))
    loop.propose("score: 1\n")
    scorer_in_repo(loop, repo, factor="10")
    repo.commit("scorer v2")
    worse = loop.propose("score: 0.5\n")
    assert worse["status"] == "discard" and worse["baseline_source"] == "remeasured"
    assert loop.stored()["score"] == 10.0 and loop.stored()["scores"] == [10.0]
    assert loop.stored()["fingerprint"] == worse["fingerprint"]
    assert loop.propose("score: 0.7\n")["baseline_source"] == "stored"


@pytest.mark.parametrize("field", ["description", "mutator", "policy"])
def test_the_task_file_counts_only_through_its_evaluating_sections(
        loop: Loop, repo: Repo, field: str) -> None:
    loop.setup()
    first = loop.propose("score: 1\n")
    task = default_task(mutator__command=f"{PY} {BIN}/mutate.py copy {loop.plan} notes.md",
                        scorer__command=loop.scorer())
    if field == "description":
        task["description"] = "a different description"
    elif field == "mutator":
        task["mutator"]["command"] += " write other.md x"
        task["mutation"]["max_changed_lines"] = 11
    else:
        task["policy"]["min_improvement"] = 0.25
    repo.write_task(task)
    repo.commit("edit the task")
    second = loop.propose("score: 2\n")
    assert second["fingerprint"] == first["fingerprint"]
    assert second["baseline_source"] == "stored"


def test_the_runner_section_and_other_files_count(loop: Loop, repo: Repo) -> None:
    loop.setup()
    base = loop.propose("score: 1\n")["fingerprint"]
    repo.write("README.md", "changed\n")
    readme = loop.propose("score: 1.25\n")
    assert readme["fingerprint"] != base and readme["baseline_source"] == "remeasured"
    loop.setup(runner__command="true # another runner")
    runner = loop.propose("score: 1.5\n")
    assert runner["fingerprint"] not in (base, readme["fingerprint"])


def test_fingerprint_globs_narrow_what_counts(loop: Loop, repo: Repo) -> None:
    loop.setup(scorer=scorer_in_repo(loop, repo), policy__fingerprint=["../../eval/*.py"])
    base = loop.propose("score: 1\n")["fingerprint"]
    repo.write("README.md", "not part of the evaluation\n")
    assert loop.propose("score: 2\n")["fingerprint"] == base
    scorer_in_repo(loop, repo, factor="2")
    assert loop.propose("score: 3\n")["fingerprint"] != base


def test_a_baseline_stored_without_a_fingerprint_is_measured_again(loop: Loop,
                                                                  repo: Repo) -> None:
    loop.setup()
    loop.propose("score: 1\n")
    data = loop.stored()
    del data["fingerprint"], data["scores"]
    (repo.path / STORE).write_text(json.dumps(data))
    rec = loop.propose("score: 2\n")
    assert rec["baseline_source"] == "remeasured" and rec["status"] == "keep"


# ---------------------------------------------------------------------------
# Evaluation integrity


def test_a_runner_that_changes_a_tracked_file_is_a_crash(loop: Loop, repo: Repo) -> None:
    loop.setup(runner__command=f"{PY} {BIN}/mutate.py append ../../README.md gamed")
    rec = loop.propose("score: 1\n", code=1)
    assert rec["status"] == "crash" and rec["crash_kind"] == "runner"
    assert rec["reason"].startswith("the runner changed tracked files: README.md;")
    assert repo.read("README.md") == "a project\n"


def test_a_scorer_that_deletes_a_tracked_file_is_a_crash(loop: Loop, repo: Repo) -> None:
    loop.setup(scorer=f"{PY} {BIN}/mutate.py rm ../../README.md && " + loop.scorer())
    rec = loop.propose("score: 1\n", code=1)
    assert rec["crash_kind"] == "scorer" and "README.md" in rec["reason"]


def test_new_untracked_outputs_are_fine(loop: Loop) -> None:
    loop.setup(runner__command=f"{PY} {BIN}/mutate.py write out/report.txt done "
               "write ../../build.log x")
    rec = loop.propose("score: 1\n")
    assert (rec["status"], rec["reason"]) == ("discard", "candidate has no change")


# ---------------------------------------------------------------------------
# loopengine calibrate


def test_calibrate_prints_the_spread_and_the_policies(loop: Loop, repo: Repo,
                                                      isolated_env: Path) -> None:
    loop.setup(offsets="0,1,2,3,4")  # the five runs score 1, 2, 3, 4, 5
    before = snapshot(repo, isolated_env)
    result = repo.run("--task", "tasks/demo/task.yaml", "--repeats", "5", command="calibrate")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("task demo: 5 runs of the baseline (evaluation fingerprint "
                               "sha256:")
    assert lines[1:] == [
        "scores: 1, 2, 3, 4, 5",
        "mean 3, standard deviation 1.58114",
        "to keep false keeps under 5% (confidence 0.95) for an effect of 1.58114 "
        "(--effect; default: one standard deviation):",
        "  repeats: 12, effect: null -- the sequential test keeps the effect 66% of the "
        "time; a candidate that is no improvement costs about 2.6 of its own runs",
        "  repeats: 1, min_improvement: 4.76695 -- one run a side, no test; keeps the "
        "effect 11% of the time",
        "the task now has repeats: 1, effect: null, min_improvement: 0, confidence: 0.95",
    ]
    assert loop.seen() == ["1"] * 5
    assert not (repo.path / STORE).exists()  # calibrate only reads
    assert_guarantees(repo, before, isolated_env, {"status": "discard", "changed_files": []})


def test_calibrate_json_and_a_stated_effect(loop: Loop, repo: Repo) -> None:
    loop.setup(offsets="0,1,2,3,4", policy__confidence=0.99)
    result = repo.run("--task", "tasks/demo/task.yaml", "--repeats", "5", "--effect", "4",
                      "--json", command="calibrate")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mean"] == 3.0 and data["scores"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert data["effect"] == 4.0 and data["confidence"] == 0.99
    assert data["tested"]["repeats"] <= 4 and data["tested"]["power"] >= 0.65
    assert data["tested"]["effect"] == 4.0 and data["deterministic"] is False
    assert data["single"]["min_improvement"] == pytest.approx(8.37843, abs=1e-5)
    assert data["fingerprint"].startswith("sha256:")


def test_calibrate_a_deterministic_evaluation(loop: Loop, repo: Repo) -> None:
    loop.setup()
    result = repo.run("--task", "tasks/demo/task.yaml", "--repeats", "3", command="calibrate")
    assert result.code == 0, result.stderr
    assert "mean 1, standard deviation 0\n" in result.stdout
    assert ("the evaluation is deterministic (3 identical scores): repeats 1 and "
            "min_improvement 0 make no false keeps") in result.stdout


def test_calibrate_crashes_like_a_run_would(loop: Loop, repo: Repo) -> None:
    loop.setup(runner__command=f"{PY} {BIN}/mutate.py append ../../README.md x")
    result = repo.run("--task", "tasks/demo/task.yaml", command="calibrate")
    assert result.code == 1
    assert "the runner changed tracked files: README.md" in result.stderr
    assert repo.read("README.md") == "a project\n"


# ---------------------------------------------------------------------------
# loopengine verify


def test_verify_a_keep_that_reproduces(loop: Loop, repo: Repo) -> None:
    loop.setup(policy__repeats=3)
    loop.propose("score: 1\n")
    kept = loop.propose("score: 2\n")
    assert kept["status"] == "keep"
    assert loop.propose("score: 3\n")["status"] == "keep"  # the keep is not HEAD any more
    loop.seen()
    result = repo.run(kept["commit"][:10], command="verify")
    assert result.code == 0, result.stdout + result.stderr
    assert loop.seen() == ["1", "2", "1", "2"]  # parent and commit, interleaved
    out = result.stdout.splitlines()
    assert out[0] == (f"keep {kept['commit'][:12]} (task demo, run {kept['run_id']}): "
                      "recorded 1.0 -> 2.0 (improvement 1)")
    assert out[1] == "evaluation fingerprint: the same as recorded"
    assert out[2] == "re-measured, parent and commit interleaved (B C B C):"
    assert out[3] == "  parent 1.0 (2 runs: 1, 1)"
    assert out[4] == "  commit 2.0 (2 runs: 2, 2)"
    assert out[5].startswith("reproduces: score 2.0 vs baseline 1.0: beats it")
    assert repo.git("status", "--porcelain") == ""


def test_verify_a_lucky_keep_that_does_not_reproduce(loop: Loop, repo: Repo) -> None:
    loop.setup(offsets="0,5,0,0")  # the second measurement ever is 5 too high
    loop.propose("score: 1\n")
    lucky = loop.propose("score: 1\nsame: value\n")
    assert lucky["status"] == "keep" and lucky["candidate_score"] == 6.0
    result = repo.run("HEAD", command="verify")
    assert result.code == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        "does not reproduce: score 1.0 does not beat baseline 1.0 by more than "
        "min_improvement 0 (higher is better)")


def test_verify_what_is_not_a_keep(loop: Loop, repo: Repo) -> None:
    loop.setup()
    result = repo.run("HEAD", command="verify")
    assert result.code == 2
    assert "could not verify: HEAD is not a loopengine keep commit" in result.stderr
    assert repo.run("no-such-rev", command="verify").code == 2


def test_fingerprint_files_leave_out_the_artifacts_and_the_task_file(repo: Repo) -> None:
    from loopengine import fingerprint, git
    from loopengine.task import load_task

    repo.write_task(default_task(artifacts__include=["*.md"]))
    repo.write("tasks/demo/b.md", "b\n")
    repo.write("tasks/demo/sub/c.md", "c\n")
    repo.commit("more")
    task = load_task(repo.path / "tasks/demo/task.yaml", repo.path)
    ctx = git.Context(repo.path)
    tree = git.out(ctx, "rev-parse", "HEAD^{tree}")
    paths = [e.decode().split("\t")[1] for e in fingerprint.files(task, ctx, tree)]
    assert paths == [".gitignore", "README.md", "tasks/demo/sub/c.md"]
    repo.write_task(default_task(artifacts__include=["*.md"], policy__fingerprint=[
        "sub/*", "../../README.md", "../../../outside"]))
    globbed = load_task(repo.path / "tasks/demo/task.yaml", repo.path)
    picked = [e.decode().split("\t")[1] for e in fingerprint.files(globbed, ctx, tree)]
    assert picked == ["README.md", "tasks/demo/sub/c.md"]


def test_touching_a_tracked_file_without_changing_it_is_fine(loop: Loop) -> None:
    rewrite = "p = '../../README.md'; data = open(p).read(); open(p, 'w').write(data)"
    loop.setup(runner__command=f'sleep 1.1 && {PY} -c "{rewrite}"')
    assert loop.propose("score: 2\n")["status"] == "keep"
