"""executor: {kind: ray} on a real Ray cluster: a head and a worker node, separate processes.

One cluster serves the module (starting one costs tens of seconds on a small machine); each
node has one CPU, so two candidates at once take both nodes.  The runner
(tests/bin/node_runner.py) leaves a marker saying which node it ran on and as which
process, which lets a test kill exactly that node or worker.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, assert_guarantees, default_task, snapshot
from ray_cluster import LocalCluster, free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
NODE_ID_LEN = 56


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(num_cpus=1) as c:
        c.add_worker()
        yield c


def ray_task(markers: Path, address: str, runner: str = "1", **overrides: Any) -> dict[str, Any]:
    # The stand-in runner reports its host pid and its worker's, and kills that worker on
    # demand: unisolated (bwrap's own PID namespace would hide both).
    task = default_task(runner__command=f"{PY} {BIN}/node_runner.py {markers} {runner}",
                        **{"isolation": {"mode": "none"}, **overrides})
    task["executor"] = {"kind": "ray", "address": address,
                        "resources": {"num_cpus": 1, "num_gpus": 0}}
    return task


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    return path


def read_markers(markers: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    found = []
    for path in sorted(markers.glob("*.json")):
        if run_id is None or path.name.startswith(run_id + "."):
            found.append({"run_id": path.name.split(".", 1)[0],
                          **json.loads(path.read_text())})
    return found


def wait_for(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def start_run(repo: Repo, procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([PY, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml",
                             *args], cwd=repo.path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout must be one line: {out!r}\n{err}"
    return proc.returncode, json.loads(lines[0]), err


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead (its parent, the dead worker, will never reap it).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def finish_batch(proc: subprocess.Popen[str], count: int,
                 timeout: float = 300) -> tuple[int, list[dict[str, Any]], str]:
    out, err = proc.communicate(timeout=timeout)
    lines = out.splitlines()
    assert len(lines) == count, f"stdout must be {count} lines: {out!r}\n{err}"
    return proc.returncode, [json.loads(line) for line in lines], err


def patch_adding(repo: Repo, tmp_path: Path, line: str, name: str) -> Path:
    """A patch that appends ``line`` to the artifact, made with git."""
    path = repo.path / "tasks/demo/notes.md"
    before = path.read_text()
    path.write_text(before + line + "\n")
    diff = repo.git("diff", "--", "tasks/demo/notes.md")
    path.write_text(before)
    out = tmp_path / name
    out.write_text(diff)
    return out


# ---------------------------------------------------------------------------
# Shipping: a worker needs the two trees and nothing else


def test_the_work_carries_two_trees_and_no_path_of_the_callers_machine(
        repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loopengine import diff, git, measure, sandbox, sync
    from loopengine.executors import remote
    from loopengine.iteration.common import EvalRequest
    from loopengine.task import load_task

    repo.write("data/big.bin", os.urandom(1 << 16))  # history the worker never gets
    repo.commit("unrelated data")
    repo.git("rm", "-q", "data/big.bin")
    repo.commit("drop it")
    repo.write("tasks/demo/notes.md", "first\nuncommitted\n")  # the overlay travels too
    task = load_task(str(repo.path / "tasks/demo/task.yaml"), repo.path)
    info = git.repo_info(repo.path)
    run_id = "20260101T000000000000Z-000000"
    sb = sandbox.create(info, run_id, ["tasks/demo/notes.md"])
    try:
        (sb.tree / "tasks/demo/notes.md").write_text("first\nuncommitted\ncandidate\n")
        cand = sandbox.snapshot(sb, "candidate")
        stats = diff.read_diff(sb.ctx, sb.start_tree, cand)
        req = EvalRequest(run_id=run_id, task=task, start_tree=sb.start_tree, tree=cand,
                          commit=None, changes=stats.files,
                          frozen=sync.artifact_state(sb.tree, task),
                          plan=measure.Plan("remeasured"), seconds_left=60)
        work = remote.make_work(req, sb.ctx)
    finally:
        sandbox.remove(sb, info)
    blob = pickle.dumps(work)
    assert str(repo.path).encode() not in blob
    assert str(tmp_path).encode() not in blob
    assert len(work.objects) < 4096  # two small trees, not the 64 KB of history

    # The worker measures with the repository gone: it never reads it.
    repo.path.rename(tmp_path / "gone")
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = remote.measure(work)
    ev = result.evaluation
    assert ev.crash is None and ev.stop is None, result
    assert ev.measured.baseline == [2.0]  # first + uncommitted: the overlay travelled
    assert ev.measured.candidate == [3.0]
    assert ev.measured.order == ["B", "C"]
    assert b"--- stdout ---" in result.logs["scorer"]
    assert os.listdir(os.environ["LOOPENGINE_SANDBOX_ROOT"]) == []  # its sandbox is gone


# ---------------------------------------------------------------------------
# Set-up and an unreachable cluster (no cluster needed)


def test_a_local_run_says_it_measured_here(repo: Repo, guarded: Any) -> None:
    rec = guarded().record
    assert rec["executor"] == "local" and rec["node"] is None


def test_a_task_file_that_cannot_be_read_names_no_executor(repo: Repo) -> None:
    repo.write_task(text="id: [broken\n")
    rec = repo.run().record
    assert rec["crash_kind"] == "config"
    assert rec["executor"] is None and rec["node"] is None


def test_a_cluster_that_cannot_be_reached_is_an_executor_crash(repo: Repo, markers: Path,
                                                               guarded: Any) -> None:
    repo.write_task(ray_task(markers, f"127.0.0.1:{free_port()}"))
    repo.commit("ray task")
    started = time.monotonic()
    result = guarded()
    rec = result.record
    assert result.code == 1
    assert rec["status"] == "crash" and rec["crash_kind"] == "executor"
    assert "cannot reach the Ray cluster at 127.0.0.1:" in rec["reason"]
    assert "ray start --head" in rec["reason"]
    assert rec["executor"] == "ray" and rec["node"] is None
    assert time.monotonic() - started < 60
    assert repo.read("tasks/demo/notes.md") == "first\n"


def test_without_ray_installed_a_ray_task_is_a_config_error(repo: Repo, markers: Path,
                                                            tmp_path: Path,
                                                            guarded: Any) -> None:
    blocker = tmp_path / "no-ray"
    blocker.mkdir()
    # As if Ray were not installed: `import ray` fails in the engine's process.
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    repo.write_task(ray_task(markers, "auto"))
    repo.commit("ray task")
    result = guarded(env={"PYTHONPATH": str(blocker)})
    rec = result.record
    assert result.code == 1
    assert rec["status"] == "crash" and rec["crash_kind"] == "config"
    assert "executor.kind: ray needs the Ray package" in rec["reason"]
    assert "uv add 'loopengine[ray]'" in rec["reason"]
    assert "pip install 'loopengine[ray]'" in rec["reason"]
    assert "executor.kind: ray" in result.stderr
    assert list(markers.iterdir()) == []
    checked = repo.run("--task", "tasks/demo/task.yaml", command="validate", task="",
                       env={"PYTHONPATH": str(blocker)})
    assert checked.code == 1
    assert "executor.kind: ray needs the Ray package" in checked.stderr
    assert "pip install 'loopengine[ray]'" in checked.stderr


# ---------------------------------------------------------------------------
# On the cluster


def test_a_run_measures_on_the_cluster_and_keeps_here(cluster: LocalCluster, repo: Repo,
                                                      markers: Path, guarded: Any) -> None:
    repo.write_task(ray_task(markers, cluster.address))
    repo.commit("ray task")
    result = guarded()
    rec = result.record
    assert result.code == 0, result.stderr
    assert rec["status"] == "keep", rec
    assert rec["executor"] == "ray"
    assert isinstance(rec["node"], str) and len(rec["node"]) == NODE_ID_LEN
    assert repo.read("tasks/demo/notes.md") == "first\nmore\n"
    assert repo.log()[0] == "loopengine(demo): keep 2.0"
    # The first run measures its baseline too: both in one Ray task, on one node.
    both = read_markers(markers, rec["run_id"])
    assert len(both) == 2 and len({(m["node"], m["worker_pid"]) for m in both}) == 1
    ran = both[-1]
    node_home = cluster.root / ran["node"]
    # It ran in the node's own sandbox, with the node's HOME, far from the repository.
    assert ran["home"] == str(node_home)
    assert ran["sandbox"].startswith(str(node_home / "sandboxes"))
    assert str(repo.path) not in json.dumps(ran)
    assert os.listdir(node_home / "sandboxes") == []
    # The full step logs came back into work/runs/<run_id>/.
    runs = repo.path / "work/runs" / rec["run_id"]
    runner_log = (runs / "runner.log").read_text()
    assert f'"pid": {ran["pid"]}' in runner_log and "runner done" in runner_log
    assert f"node {rec['node']}" in runner_log
    assert '"score": 2' in (runs / "scorer.log").read_text()


def test_baseline_and_candidate_of_a_comparison_run_on_the_same_node(
        cluster: LocalCluster, repo: Repo, markers: Path, guarded: Any) -> None:
    repo.write_task(ray_task(markers, cluster.address, runner="0.2",
                             policy__remeasure_baseline=True, policy__repeats=2))
    repo.commit("ray task")
    rec = guarded().record
    assert rec["baseline_source"] == "remeasured"
    runs = len(rec["baseline_scores"]) + len(rec["candidate_scores"])
    assert runs >= 2
    ran = read_markers(markers, rec["run_id"])
    assert len(ran) == runs
    assert len({m["node"] for m in ran}) == 1
    assert len({m["worker_pid"] for m in ran}) == 1  # one Ray task measured them all


def test_a_batch_is_evaluated_across_both_nodes(cluster: LocalCluster, repo: Repo,
                                                markers: Path, tmp_path: Path,
                                                isolated_env: Path,
                                                procs: list[subprocess.Popen[str]]) -> None:
    repo.write_task(ray_task(markers, cluster.address, runner="4"))
    repo.commit("ray task")
    patches = [patch_adding(repo, tmp_path, "x" * (i + 1), f"{i}.diff") for i in range(2)]
    before = snapshot(repo, isolated_env)
    batch = start_run(repo, procs, "--patch", str(patches[0]), "--patch", str(patches[1]),
                      "--jobs", "2")
    code, records, err = finish_batch(batch, 2)
    assert code == 0, err
    assert {r["executor"] for r in records} == {"ray"}
    assert len({r["node"] for r in records}) == 2, "both nodes should have measured"
    for r in records:
        assert len(r["node"]) == NODE_ID_LEN
    # The batch's baseline was measured on the cluster too, then each candidate.
    ran = read_markers(markers)
    assert len({m["node"] for m in ran}) == 2
    assert len(ran) == 3
    assert sorted(r["status"] for r in records) == ["discard", "keep"], records
    kept = next(r for r in records if r["status"] == "keep")
    assert_guarantees(repo, before, isolated_env, kept, batch=records)
    assert repo.git("status", "--porcelain") == ""
    for r in records:  # every candidate's ref, reviewable with plain git
        assert repo.git("rev-parse", "--verify", r["ref"]).strip()


def test_a_worker_node_killed_mid_evaluation_is_retried_on_another(
        cluster: LocalCluster, repo: Repo, markers: Path, tmp_path: Path,
        isolated_env: Path, procs: list[subprocess.Popen[str]]) -> None:
    repo.write_task(ray_task(markers, cluster.address, runner="8"))
    repo.commit("ray task")
    patches = [patch_adding(repo, tmp_path, "x" * (i + 1), f"{i}.diff") for i in range(2)]
    before = snapshot(repo, isolated_env)
    batch = start_run(repo, procs, "--patch", str(patches[0]), "--patch", str(patches[1]),
                      "--jobs", "2")
    baseline = lambda: len(read_markers(markers)) >= 1  # noqa: E731
    wait_for(baseline)
    wait_for(lambda: len(read_markers(markers)) == 3)  # the baseline, then both candidates
    candidates = read_markers(markers)[1:]
    doomed = next(m for m in candidates if m["node"] != "head")
    node = next(n for n in cluster.nodes if n.name == doomed["node"])
    try:
        node.kill()
        code, records, err = finish_batch(batch, 2)
    finally:
        cluster.nodes.remove(node)
        cluster.add_worker()  # the next test gets its two nodes again
    assert code == 0, (records, err)
    retried = next(r for r in records if r["run_id"] == doomed["run_id"])
    other = next(r for r in records if r["run_id"] != doomed["run_id"])
    assert retried["status"] in ("keep", "discard"), retried
    # Measured again, in full, on the node that survived.
    assert sorted(m["node"] for m in read_markers(markers, retried["run_id"])) == \
        sorted([doomed["node"], "head"])
    assert retried["node"] == other["node"]
    log = (repo.path / "work/runs" / retried["run_id"] / "runner.log").read_text()
    assert "retried once" in log and "runner done" in log
    assert sorted(r["status"] for r in records) == ["discard", "keep"]
    kept = next(r for r in records if r["status"] == "keep")
    assert_guarantees(repo, before, isolated_env, kept, batch=records)
    assert repo.git("status", "--porcelain") == ""


def test_a_lost_worker_is_retried_once(cluster: LocalCluster, repo: Repo, markers: Path,
                                       tmp_path: Path, guarded: Any) -> None:
    flag = tmp_path / "killed-once"
    repo.write_task(ray_task(markers, cluster.address, runner=f"0.5 --kill-worker-once {flag}"))
    repo.commit("ray task")
    rec = guarded().record
    assert rec["status"] == "keep", rec
    # The first attempt died in its first runner; the second measured baseline and candidate.
    assert len(read_markers(markers, rec["run_id"])) == 3
    log = (repo.path / "work/runs" / rec["run_id"] / "runner.log").read_text()
    assert "the Ray worker running the measurements died" in log and "retried once" in log


def test_a_ray_task_cancelled_by_someone_else_is_retried_once(cluster: LocalCluster,
                                                              repo: Repo, markers: Path) -> None:
    repo.write_task(ray_task(markers, cluster.address, runner="3"))
    repo.commit("ray task")
    proc = subprocess.run([PY, str(BIN / "cancel_once.py"), str(repo.path), cluster.address,
                           str(markers)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["crash"] == "None"
    assert out["candidate"] == [2.0]
    assert out["markers"] == 2
    [lost] = out["retried"]
    assert lost.startswith("the Ray task was cancelled")


def test_lost_twice_is_an_executor_crash(cluster: LocalCluster, repo: Repo, markers: Path,
                                         guarded: Any) -> None:
    repo.write_task(ray_task(markers, cluster.address, runner="0.5 --kill-worker"))
    repo.commit("ray task")
    result = guarded()
    rec = result.record
    assert result.code == 1
    assert rec["status"] == "crash" and rec["crash_kind"] == "executor"
    assert rec["reason"].startswith("the Ray cluster lost the measurements twice")
    assert "worker" in rec["reason"] and "died" in rec["reason"]
    assert len(read_markers(markers, rec["run_id"])) == 2
    assert repo.read("tasks/demo/notes.md") == "first\n"


def test_a_timeout_on_the_worker_kills_the_whole_step_tree(cluster: LocalCluster, repo: Repo,
                                                          markers: Path, tmp_path: Path,
                                                          guarded: Any) -> None:
    pidfile = tmp_path / "detached.pid"
    task = ray_task(markers, cluster.address)
    task["runner"] = {"command": f"{BIN}/detach_and_wait.sh {pidfile}", "cwd": "tasks/demo",
                      "timeout_seconds": 3}
    repo.write_task(task)
    repo.commit("ray task")
    rec = guarded().record
    assert rec["status"] == "crash" and rec["crash_kind"] == "timeout", rec
    assert rec["reason"].startswith("runner timed out after 3s (runner.timeout_seconds)")
    assert "detached" in rec["log_tail"]
    wait_for(lambda: not pid_alive(int(pidfile.read_text())), timeout=10)


def test_resources_no_node_has_end_as_a_budget_crash(cluster: LocalCluster, repo: Repo,
                                                      markers: Path, guarded: Any) -> None:
    task = ray_task(markers, cluster.address, budget__max_seconds=3)
    task["executor"]["resources"] = {"num_cpus": 64, "num_gpus": 0}
    repo.write_task(task)
    repo.commit("ray task")
    started = time.monotonic()
    result = guarded()  # stdout is one record line, whatever Ray says about the request
    rec = result.record
    assert rec["status"] == "crash" and rec["crash_kind"] == "budget", rec
    assert "budget.max_seconds (3s) ran out before the ray executor returned" in rec["reason"]
    assert list(markers.iterdir()) == []
    assert time.monotonic() - started < 90


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_cancels_the_ray_task_and_its_steps(cluster: LocalCluster, repo: Repo,
                                                    markers: Path, isolated_env: Path,
                                                    procs: list[subprocess.Popen[str]],
                                                    signum: int, code: int) -> None:
    repo.write_task(ray_task(markers, cluster.address, runner="60"))
    repo.commit("ray task")
    before = snapshot(repo, isolated_env)
    run = start_run(repo, procs)
    wait_for(lambda: len(read_markers(markers)) == 1)
    [ran] = read_markers(markers)
    run.send_signal(signum)
    exit_code, rec, err = finish(run, timeout=60)
    assert exit_code == code, err
    assert rec["status"] == "crash" and rec["crash_kind"] == "interrupted"
    assert_guarantees(repo, before, isolated_env, rec)
    wait_for(lambda: not pid_alive(ran["pid"]), timeout=15)


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the Ray cluster tests need Linux", allow_module_level=True)
