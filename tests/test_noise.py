"""The evaluation's noise, pooled per fingerprint next to the baseline store (issue 16.2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, default_task

from loopengine import noise
from loopengine.stats import Pool


def test_groups_add_up_per_fingerprint(tmp_path: Path) -> None:
    noise.add(tmp_path, "t", "sha256:a", [[1.0, 2.0, 3.0], [5.0]])  # a single run adds 0 df
    noise.add(tmp_path, "t", "sha256:a", [[10.0, 12.0]])
    noise.add(tmp_path, "t", "sha256:b", [[0.0, 4.0]])
    assert noise.load(tmp_path, "t", "sha256:a") == Pool(4.0, 3)
    assert noise.load(tmp_path, "t", "sha256:b") == Pool(8.0, 1)
    assert noise.load(tmp_path, "t", "sha256:c") == Pool()
    assert noise.load(tmp_path, "other", "sha256:a") == Pool()
    assert noise.load(tmp_path, "t", None) == Pool()
    assert noise.noise_path(tmp_path, "t") == tmp_path / "work/baselines/noise/t.json"


def test_a_damaged_file_reads_as_empty_and_is_replaced(tmp_path: Path) -> None:
    path = noise.noise_path(tmp_path, "t")
    path.parent.mkdir(parents=True)
    for damage in ("{not json", '{"pools": [1, 2]}', '{"pools": {"fp": {"ss": -1, "df": 2}}}',
                   '{"pools": {"fp": {"ss": true, "df": 2}}}', "null"):
        path.write_text(damage)
        assert noise.load(tmp_path, "t", "fp") == Pool()
    noise.add(tmp_path, "t", "fp", [[1.0, 3.0]])
    assert noise.load(tmp_path, "t", "fp") == Pool(2.0, 1)
    assert json.loads(path.read_text())["version"] == 1


def test_only_the_newest_fingerprints_are_kept(tmp_path: Path) -> None:
    for i in range(noise.KEEP_FINGERPRINTS + 5):
        noise.add(tmp_path, "t", f"fp{i}", [[0.0, 1.0]])
    pools = json.loads(noise.noise_path(tmp_path, "t").read_text())["pools"]
    assert len(pools) == noise.KEEP_FINGERPRINTS and "fp0" not in pools
    assert f"fp{noise.KEEP_FINGERPRINTS + 4}" in pools


def test_runs_with_repeats_pool_their_noise(repo: Repo, guarded: Any, tmp_path: Path) -> None:
    plan, state = tmp_path / "proposal.md", tmp_path / "state"
    repo.write("tasks/demo/notes.md", "score: 1\n")
    # Call k scores 1 + offsets[k % 8]: baseline 1, 1.2, 0.8; candidate 1.1; baseline 1
    # (it grows to 1.5 x repeats = 4 runs); candidate 1.2, 0.8 -- never clear, an
    # inconclusive discard at the cap.
    repo.write_task(default_task(
        mutator__command=f"{PY} {BIN}/mutate.py copy {plan} notes.md",
        scorer__command=f"{PY} {BIN}/noisy_score.py notes.md {state} 0 "
                        "0,0.2,-0.2,0.1,0,0.2,-0.2,0.05",
        policy__repeats=3,
        # The scorer keeps its call counter where the next call finds it.
        isolation={"write": [str(state)]}))
    repo.commit("noisy task")
    plan.write_text("score: 1\nsame\n")
    first = guarded().record
    assert first["status"] == "discard" and first["reason"].startswith("inconclusive: ")
    assert first["candidate_scores"] == pytest.approx([1.1, 1.2, 0.8])
    assert first["baseline_scores"] == pytest.approx([1.0, 1.2, 0.8, 1.0])
    assert first["runs"] == 7
    # The candidate's runs are pooled; the baseline's stay in the baseline store until a
    # keep retires them.
    pool = noise.load(repo.path, "demo", first["fingerprint"])
    assert pool.df == 2 and pool.ss == pytest.approx(Pool.of(first["candidate_scores"]).ss)
    # Damaged, the file costs runs, never a crash: the next iteration works and rewrites it.
    path = noise.noise_path(repo.path, "demo")
    path.write_text("{damaged")
    plan.write_text("score: 1\nother\n")
    again = guarded().record
    assert again["status"] == "discard"
    assert noise.load(repo.path, "demo", first["fingerprint"]).df == len(
        again["candidate_scores"]) - 1
