"""What a record says about the baseline it was held against: ``baseline_metrics`` and an
honest ``baseline_source``."""

from __future__ import annotations

import json

from conftest import Repo, default_task


def test_records_carry_the_baselines_metrics(repo: Repo) -> None:
    first = repo.run().record
    assert (first["status"], first["baseline_source"]) == ("keep", "remeasured")
    # The first run measures the baseline: its metrics are that measurement's.
    assert first["baseline_metrics"] == {"bytes": len("first\n")}
    second = repo.run().record
    assert (second["status"], second["baseline_source"]) == ("keep", "stored")
    # The stored baseline is the first keep: its metrics are that keep's.
    assert second["baseline_metrics"] == first["metrics"] == {"bytes": len("first\nmore\n")}
    assert second["metrics"] == {"bytes": len("first\nmore\nmore\n")}
    store = json.loads((repo.path / "work/baselines/demo.json").read_text())
    assert store["metrics"] == second["metrics"]
    # A new constraint is another evaluation: the baseline is measured afresh, and the
    # discard shows both sides' metrics, so an agent sees which metric is out of bounds.
    repo.write_task(default_task(constraints=[{"metric": "bytes", "max": 18}]))
    repo.commit("a constraint")
    third = repo.run().record
    assert (third["status"], third["baseline_source"]) == ("discard", "remeasured")
    assert third["violations"][0]["rule"] == "constraint.max"
    assert third["metrics"] == {"bytes": len("first\nmore\nmore\nmore\n")}
    assert third["baseline_metrics"] == {"bytes": len("first\nmore\nmore\n")}
    # Record fields only ever grow at the end: the new one follows the contract's.
    keys = list(third)
    assert keys.index("baseline_metrics") > keys.index("log_tail")


def test_a_baseline_store_without_metrics_still_reads(repo: Repo) -> None:
    repo.run()
    path = repo.path / "work/baselines/demo.json"
    store = json.loads(path.read_text())
    del store["metrics"]
    path.write_text(json.dumps(store))
    again = repo.run().record
    assert (again["status"], again["baseline_source"]) == ("keep", "stored")
    assert again["baseline_metrics"] == {}


def test_nothing_measured_is_not_remeasured(repo: Repo) -> None:
    task = default_task(policy__remeasure_baseline=True)
    task["runner"]["cwd"] = "tasks/missing"
    repo.write_task(task)
    repo.commit("a runner cwd that does not exist")
    rec = repo.run().record
    assert (rec["status"], rec["crash_kind"]) == ("crash", "config")
    assert "runner.cwd" in rec["reason"]
    assert rec["baseline_source"] == "none"
    assert rec["baseline_scores"] == [] and rec["baseline_score"] is None
    assert rec["baseline_metrics"] == {}
    # A task file that cannot be read: nothing measured either.
    repo.write_task(text="id: demo\n")
    broken = repo.run().record
    assert (broken["crash_kind"], broken["baseline_source"]) == ("config", "none")
    assert broken["baseline_metrics"] == {}
