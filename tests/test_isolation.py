"""Issue 11: a candidate reaches only its sandbox.  Each hostile case is a real step under
real bubblewrap (``mode: bwrap``, so a machine where bwrap is broken fails them loudly), and
where it is safe to show, the same step under ``mode: none`` shows the hole."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PY, Repo, Result, default_task, snapshot
from contract_checks import check_fields, no_leftovers

from loopengine import isolation
from loopengine.task import Isolation, load_task

PROBE = BIN / "isolation_probe.py"


def probe_command(spec: dict[str, Any]) -> str:
    return shlex.join([PY, str(PROBE), json.dumps(spec)])


def use(repo: Repo, **overrides: Any) -> None:
    repo.write_task(default_task(**overrides))
    repo.commit("task")


def run(repo: Repo, *args: str, env: dict[str, str] | None = None) -> tuple[Result, dict]:
    result = repo.run(*args, env=env)
    rec = result.record
    check_fields(rec)
    return result, rec


def probed(repo: Repo, rec: dict[str, Any], step: str = "runner") -> dict[str, Any]:
    log = (repo.path / "work" / "runs" / rec["run_id"] / f"{step}.log").read_text()
    # One line a measurement (a first run measures the baseline too): the last is the
    # candidate's.
    lines = [line for line in log.splitlines() if line.startswith("PROBE ")]
    assert lines, log
    return json.loads(lines[-1].removeprefix("PROBE "))


def failed(outcome: str) -> bool:
    return outcome.startswith("error")


@pytest.fixture
def home(isolated_env: Path) -> Path:
    """The test's $HOME with the secrets a step must not read."""
    home = Path(os.environ["HOME"])
    for rel, text in [(".ssh/id_ed25519", "PRIVATE KEY"), (".aws/credentials", "aws-secret"),
                      (".netrc", "machine x password hunter2"),
                      (".config/gcloud/credentials.db", "gcloud"), (".kube/config", "kube"),
                      (".git-credentials", "https://u:p@host"), (".pypirc", "pypi-token"),
                      (".bashrc", "# the user's shell\n"), ("private/notes.txt", "mine")]:
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return home


@pytest.fixture
def secrets_repo(repo: Repo) -> Repo:
    """The demo repository with ignored files a candidate must not read."""
    repo.write(".gitignore", "/work/\n.env\n/datasets/\n/.venv/\n")
    repo.write(".env", "OPENAI_API_KEY=sk-from-dotenv\n")
    repo.write("datasets/private.csv", "id,label\n1,secret\n")
    repo.write(".venv/marker.txt", "the project's virtualenv\n")
    repo.commit("ignore")
    return repo


# --- the command line, as data ------------------------------------------------------------


def test_argv_hides_the_main_tree_and_secrets_and_binds_the_sandbox(tmp_path: Path) -> None:
    root, tree, home = tmp_path / "repo", tmp_path / "sb" / "tree", tmp_path / "home"
    for path in (root / ".git" / "objects", root / "data" / "private", tree, home / ".ssh"):
        path.mkdir(parents=True)
    (home / ".netrc").write_text("x")
    bw = isolation.Bwrap("/usr/bin/bwrap", "0.11.0", "system", tmp_overlay=True)
    iso = Isolation(mode="bwrap", read=("data",), hide=("data/private",))
    args = isolation.argv(bw, iso, isolation.Places(tree, root, root / ".git", home), tree, "true")
    assert args[0] == "/usr/bin/bwrap"
    assert args[-4:] == ["--", "/bin/sh", "-c", "true"]
    pairs = list(itertools.pairwise(args))
    assert ("--ro-bind", "/") in pairs and ("--unshare-net", "--die-with-parent") in pairs
    assert "--unshare-pid" in args and ("--tmp-overlay", "/tmp") in pairs
    order = [(a, b) for a, b in pairs if a in ("--tmpfs", "--ro-bind", "--bind")]
    spots = {item: n for n, item in enumerate(order)}
    # the main tree is hidden first; then its objects and the dataset folder come back,
    # then the private part of the dataset is hidden again; the sandbox comes last
    assert spots[("--tmpfs", str(root))] < spots[("--ro-bind", str(root / ".git" / "objects"))]
    assert spots[("--tmpfs", str(root))] < spots[("--ro-bind", str(root / "data"))]
    assert spots[("--ro-bind", str(root / "data"))] < spots[("--tmpfs", str(root / "data/private"))]
    assert order[-1] == ("--bind", str(tree))
    assert ("--tmpfs", str(home / ".ssh")) in pairs
    assert ("/dev/null", str(home / ".netrc")) in pairs
    assert ("--remount-ro", str(root)) in pairs
    networked = isolation.argv(bw, Isolation(network=True),
                               isolation.Places(tree, root, None, home), tree, "true")
    assert "--unshare-net" not in networked and "--unshare-pid" in networked


def test_environment_is_cleared_to_the_allowlist_plus_env() -> None:
    env = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "LOOPENGINE_RUN_ID": "r",
           "OPENAI_API_KEY": "sk", "AWS_SECRET_ACCESS_KEY": "a", "SSH_AUTH_SOCK": "/s",
           "HTTPS_PROXY": "http://u:p@proxy", "HF_TOKEN": "hf"}
    assert isolation.environment(env, Isolation()) == {
        "PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "LOOPENGINE_RUN_ID": "r"}
    passed = isolation.environment(env, Isolation(env=("OPENAI_*", "HF_TOKEN")))
    assert passed["OPENAI_API_KEY"] == "sk" and passed["HF_TOKEN"] == "hf"
    assert "AWS_SECRET_ACCESS_KEY" not in passed


def test_bwrap_works_on_this_machine() -> None:
    found = isolation.probe()
    assert found.bwrap is not None, found.why


# --- writes -------------------------------------------------------------------------------


def _write_targets(repo: Repo, home: Path, tmp_path: Path, tag: str) -> dict[str, Path]:
    return {
        "main tree": repo.path / "README.md",
        "main tree, new file": repo.path / "planted.txt",
        "git config": repo.path / ".git" / "config",
        "git ref": repo.path / ".git" / "refs" / "heads" / "evil",
        "git hook": repo.path / ".git" / "hooks" / "pre-commit",
        "git objects": repo.path / ".git" / "objects" / "ab" / "planted",
        "home": home / ".bashrc",
        "home, new file": home / "planted.txt",
        "elsewhere": Path("/var/tmp") / f"loopengine-planted-{tag}" / "planted.txt",
    }


def test_bwrap_step_writes_only_to_its_sandbox_tmp_and_write_paths(
        secrets_repo: Repo, home: Path, tmp_path: Path, isolated_env: Path) -> None:
    repo = secrets_repo
    tag = uuid.uuid4().hex
    targets = _write_targets(repo, home, tmp_path, tag)
    cache = tmp_path / "cache"
    # /tmp is a throwaway layer: writes work, and vanish with the step
    allowed = {"sandbox work/": "../../work/probe.txt", "scratch in /tmp": f"/tmp/scratch-{tag}",
               "isolation.write": str(cache / "entry.txt"),
               "~/.cache, a throwaway layer too": str(home / ".cache" / "uv" / "lock")}
    use(repo, isolation={"mode": "bwrap", "write": [str(cache)]},
        runner__command=probe_command(
            {"write": [str(p) for p in targets.values()] + list(allowed.values())}))
    before = snapshot(repo, isolated_env)
    bashrc = (home / ".bashrc").read_text()
    _result, rec = run(repo)
    assert rec["isolation"] == "bwrap"
    assert rec["status"] == "keep", rec
    seen = probed(repo, rec)["write"]
    for what, path in targets.items():
        assert failed(seen[str(path)]), f"{what}: the step wrote {path}"
    for what, path in allowed.items():
        assert seen[path] == "ok", f"{what}: {seen[path]}"
    # nothing reached the host but the write path
    assert (home / ".bashrc").read_text() == bashrc
    assert not (home / "planted.txt").exists()
    assert not Path(f"/tmp/scratch-{tag}").exists()
    assert not (home / ".cache" / "uv").exists()
    assert not Path(f"/var/tmp/loopengine-planted-{tag}").exists()
    # the write path keeps what each measurement (baseline, candidate) wrote there
    assert (cache / "entry.txt").read_text().startswith("planted by a step\n")
    after = snapshot(repo, isolated_env)
    assert "refs/heads/evil" not in after.refs
    # the keep moved main and saved its candidate ref; nothing else
    assert {line.split()[0] for line in after.refs.splitlines()
            if not line.startswith("refs/loopengine/")} == {"refs/heads/main"}
    assert after.config == before.config and after.hooks == before.hooks
    assert not (repo.path / ".git" / "objects" / "ab" / "planted").exists()
    assert not (repo.path / "planted.txt").exists()
    assert repo.read("README.md") == "a project\n"
    no_leftovers(repo, isolated_env)


def test_none_shows_the_hole_the_sandbox_closes(repo: Repo, home: Path, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    targets = [home / "planted.txt", Path("/tmp") / f"loopengine-planted-{tag}",
               tmp_path / "elsewhere" / "planted.txt", repo.path / "planted.txt"]
    use(repo, isolation={"mode": "none"},
        runner__command=probe_command({"write": [str(p) for p in targets]}))
    try:
        _result, rec = run(repo)
        assert rec["isolation"] == "none"
        seen = probed(repo, rec)["write"]
        assert all(seen[str(p)] == "ok" for p in targets), seen
        assert all(p.exists() for p in targets)
    finally:
        Path(f"/tmp/loopengine-planted-{tag}").unlink(missing_ok=True)


# --- reads and the environment -------------------------------------------------------------


def _read_targets(repo: Repo, home: Path) -> list[Path]:
    return [repo.path / ".env", repo.path / "datasets" / "private.csv",
            repo.path / "README.md", repo.path / ".git" / "config",
            home / ".ssh" / "id_ed25519", home / ".aws" / "credentials", home / ".netrc",
            home / ".config" / "gcloud" / "credentials.db", home / ".kube" / "config",
            home / ".git-credentials", home / ".pypirc", home / "private" / "notes.txt"]


def test_bwrap_step_cannot_read_the_main_tree_secrets_or_the_callers_keys(
        secrets_repo: Repo, home: Path) -> None:
    repo = secrets_repo
    targets = _read_targets(repo, home)
    readable = [home / ".bashrc", repo.path / ".venv" / "marker.txt", Path(PY)]
    use(repo, isolation={"mode": "bwrap", "hide": ["~/private"]},
        runner__command=probe_command({
            "read": [str(p) for p in targets + readable],
            "write": [str(repo.path / ".venv" / "marker.txt")],
            "env": ["OPENAI_API_KEY", "LOOPENGINE_RUN_ID", "PATH", "HOME", "SSH_AUTH_SOCK"]}))
    _result, rec = run(repo, env={"OPENAI_API_KEY": "sk-caller", "SSH_AUTH_SOCK": "/x/agent"})
    assert rec["isolation"] == "bwrap" and rec["status"] == "keep", rec
    seen = probed(repo, rec)
    for path in targets:
        assert failed(seen["read"][str(path)]), f"the step read {path}"
    for path in readable:
        assert seen["read"][str(path)] == "ok", f"{path}: {seen['read'][str(path)]}"
    assert failed(seen["write"][str(repo.path / ".venv" / "marker.txt")])  # read-only
    env = seen["env"]
    assert env["OPENAI_API_KEY"] is None and env["SSH_AUTH_SOCK"] is None
    assert env["LOOPENGINE_RUN_ID"] == rec["run_id"]
    assert env["HOME"] == str(home) and env["PATH"] == os.environ["PATH"]


def test_none_shows_the_secrets_the_sandbox_hides(secrets_repo: Repo, home: Path) -> None:
    repo = secrets_repo
    use(repo, isolation={"mode": "none"}, runner__command=probe_command(
        {"read": [str(repo.path / ".env"), str(home / ".ssh" / "id_ed25519")],
         "env": ["OPENAI_API_KEY"]}))
    _result, rec = run(repo, env={"OPENAI_API_KEY": "sk-caller"})
    seen = probed(repo, rec)
    assert set(seen["read"].values()) == {"ok"}
    assert seen["env"]["OPENAI_API_KEY"] == "sk-caller"


def test_read_gives_a_dataset_read_only_and_env_passes_one_key(
        secrets_repo: Repo, home: Path) -> None:
    repo = secrets_repo
    data = repo.path / "datasets" / "private.csv"
    use(repo, isolation={"mode": "bwrap", "read": ["datasets", "~/.aws"],
                         "env": ["OPENAI_API_KEY"]},
        runner__command=probe_command({
            "read": [str(data), str(home / ".aws" / "credentials"), str(repo.path / ".env")],
            "write": [str(data)], "env": ["OPENAI_API_KEY", "OTHER_KEY"]}))
    _result, rec = run(repo, env={"OPENAI_API_KEY": "sk-one", "OTHER_KEY": "sk-two"})
    seen = probed(repo, rec)
    assert seen["read"][str(data)] == "ok"
    assert seen["read"][str(home / ".aws" / "credentials")] == "ok"
    assert failed(seen["read"][str(repo.path / ".env")])
    assert failed(seen["write"][str(data)])
    assert data.read_text() == "id,label\n1,secret\n"
    assert seen["env"] == {"OPENAI_API_KEY": "sk-one", "OTHER_KEY": None}


# --- network ------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on the host's loopback that greets whoever connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hi")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


@pytest.mark.parametrize(("iso", "reachable"), [
    ({"mode": "bwrap"}, False),
    ({"mode": "bwrap", "network": True}, True),
    ({"mode": "none"}, True),
])
def test_network_only_when_allowed(repo: Repo, listener: int, iso: dict, reachable: bool) -> None:
    use(repo, isolation=iso,
        runner__command=probe_command({"connect": ["127.0.0.1", listener]}))
    _result, rec = run(repo)
    outcome = probed(repo, rec)["connect"]
    assert (outcome == "ok") is reachable, outcome


def test_per_step_override_network_and_one_key_for_the_mutator_only(
        repo: Repo, listener: int) -> None:
    spec = {"connect": ["127.0.0.1", listener], "env": ["LLM_API_KEY"]}
    use(repo, isolation={"mode": "bwrap"},
        mutator__command=f"{probe_command(spec)} && {PY} {BIN}/append_line.py notes.md more",
        mutator__isolation={"network": True, "env": ["LLM_API_KEY"]},
        runner__command=probe_command(spec))
    _result, rec = run(repo, env={"LLM_API_KEY": "sk-llm"})
    assert rec["status"] == "keep" and rec["isolation"] == "bwrap", rec
    mutator, runner = probed(repo, rec, "mutator"), probed(repo, rec, "runner")
    assert mutator["connect"] == "ok" and mutator["env"] == {"LLM_API_KEY": "sk-llm"}
    assert failed(runner["connect"]) and runner["env"] == {"LLM_API_KEY": None}


# --- processes ----------------------------------------------------------------------------


def _survivors(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X") and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def _no_survivors(marker: str, within: float = 2.0) -> list[int]:
    deadline = time.monotonic() + within
    while _survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    return _survivors(marker)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


def test_bwrap_step_cannot_see_or_signal_the_engine(repo: Repo, tmp_path: Path) -> None:
    # Under mode none this very command would kill every process the user may signal:
    # it is only ever run isolated (mode: bwrap fails closed).
    use(repo, isolation={"mode": "bwrap"}, runner__command=(
        f"kill -9 $PPID; kill -9 -1; {probe_command({'pids': True})}"))
    _result, rec = run(repo)
    assert rec["isolation"] == "bwrap"
    assert rec["status"] == "keep", rec  # the engine lived on and decided
    seen = probed(repo, rec)
    assert seen["pids"] < 10  # its own namespace: bwrap's init, the shell, the probe
    assert seen["ppid"] <= 2  # the shell in its own namespace, never the engine
    assert len(repo.results()) == 1


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_nothing_outlives_the_step_daemon_or_pid_hopper(repo: Repo, mode: str) -> None:
    marker = f"loopengine-hopper-{uuid.uuid4().hex}"
    daemon = (f"setsid {PY} -c 'import time; time.sleep(300)' {marker}-daemon "
              "</dev/null >/dev/null 2>&1 &")
    hopper = f"{PY} {BIN}/pid_hopper.py {marker} </dev/null >/dev/null 2>&1 &"
    use(repo, isolation={"mode": mode},
        runner__command=f"{daemon} {hopper} sleep 0.5; echo started")
    try:
        _result, rec = run(repo)
        assert rec["isolation"] == mode and rec["status"] == "keep", rec
        log = (repo.path / "work" / "runs" / rec["run_id"] / "runner.log").read_text()
        assert "started" in log
        assert _no_survivors(marker) == []
    finally:
        _kill(_survivors(marker))


def test_pid_hopper_is_caught_by_the_reaper_in_process_run_step(tmp_path: Path) -> None:
    """Issue 9 point 8, mode none, at the level of one step: and how long it takes."""
    from loopengine.process import run_step, step_env

    marker = f"loopengine-hopper-{uuid.uuid4().hex}"
    beat = tmp_path / "beat"
    command = f"{PY} {BIN}/pid_hopper.py {marker} {beat} </dev/null >/dev/null 2>&1 & sleep 0.3"
    try:
        result = run_step("runner", command, cwd=tmp_path, env=step_env(os.environ, {}),
                          timeout=30, log_path=tmp_path / "runner.log")
        assert result.ok
        assert beat.exists()  # it was hopping
        assert _survivors(marker) == []  # gone by the time run_step returns
    finally:
        _kill(_survivors(marker))


# --- a normal runner still works ----------------------------------------------------------


def test_a_training_runner_works_under_bwrap(secrets_repo: Repo, home: Path,
                                              tmp_path: Path) -> None:
    repo = secrets_repo
    # An interpreter that lives in the home directory, as pyenv's and uv's do.
    subprocess.run([PY, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(home / ".venvs" / "py")], check=True)
    repo.write("tasks/demo/train.py", (
        "import json, os, tempfile, subprocess, sys\n"
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=(200, 3)); y = x @ np.array([1.0, 2.0, 3.0])\n"
        "with tempfile.NamedTemporaryFile('w', dir='/tmp', delete=False) as f:\n"
        "    f.write('scratch')\n"
        "w, *_ = np.linalg.lstsq(x, y, rcond=None)\n"
        "log = subprocess.run(['git', 'log', '--oneline'], capture_output=True, text=True,"
        " check=True).stdout\n"
        "out = {'score': float(-abs(w - [1, 2, 3]).sum()), 'commits': len(log.splitlines()),"
        " 'python': sys.executable}\n"
        "json.dump(out, open('../../work/model.json', 'w'))\n"))
    repo.write("tasks/demo/score.py", (
        "import json\nm = json.load(open('../../work/model.json'))\n"
        "print(json.dumps({'score': m['score'], 'metrics': {'commits': m['commits']}}))\n"))
    repo.commit("train")
    python = home / ".venvs" / "py" / "bin" / "python"
    use(repo, isolation={"mode": "bwrap"}, runner__command="~/.venvs/py/bin/python train.py",
        scorer__command=f"{python} score.py")
    result, rec = run(repo)
    assert rec["isolation"] == "bwrap"
    assert rec["status"] in ("keep", "discard"), (rec, result.stderr)
    assert rec["candidate_score"] == pytest.approx(0, abs=1e-6)
    assert rec["metrics"]["commits"] >= 1  # git in the sandbox reads the borrowed objects


# --- modes ----------------------------------------------------------------------------------


def test_auto_falls_back_with_one_warning_where_bwrap_does_not_work(repo: Repo) -> None:
    # the demo task has no isolation section: auto
    result, rec = run(repo, env={"LOOPENGINE_BWRAP": "/bin/false"})
    assert rec["isolation"] == "none" and rec["status"] == "keep", rec
    warnings = [line for line in result.stderr.splitlines() if "without isolation" in line]
    assert len(warnings) == 1, result.stderr
    result, rec = run(repo)
    assert rec["isolation"] == "bwrap"
    assert "without isolation" not in result.stderr


def test_mode_bwrap_fails_closed_naming_why_and_the_fix(repo: Repo,
                                                        isolated_env: Path) -> None:
    use(repo, isolation={"mode": "bwrap"})
    before = snapshot(repo, isolated_env)
    result, rec = run(repo, env={"LOOPENGINE_BWRAP": "/bin/false"})
    assert result.code == 1
    assert rec["status"] == "crash" and rec["crash_kind"] == "sandbox", rec
    assert "bubblewrap does not work here" in rec["reason"]
    assert "isolation.mode: none" in rec["reason"]
    assert rec["isolation"] == "bwrap"
    assert not (repo.path / "work" / "runs" / rec["run_id"] / "mutator.log").exists()
    assert repo.read("tasks/demo/notes.md") == "first\n"
    assert snapshot(repo, isolated_env).refs == before.refs
    no_leftovers(repo, isolated_env)


def test_a_step_of_its_own_mode(repo: Repo) -> None:
    use(repo, isolation={"mode": "bwrap"}, runner__isolation={"mode": "none"})
    _result, rec = run(repo)
    assert rec["isolation"] == "none"  # not every step was isolated
    use(repo, isolation={"mode": "none"}, runner__isolation={"mode": "bwrap"},
        mutator__isolation={"mode": "bwrap"}, scorer__isolation={"mode": "bwrap"})
    _result, rec = run(repo)
    assert rec["isolation"] == "bwrap"


def test_tripwire_repairs_under_none_and_is_not_needed_under_bwrap(repo: Repo) -> None:
    step = f"git -C {shlex.quote(str(repo.path))} branch evil || true"
    use(repo, isolation={"mode": "none"}, runner__command=step)
    _result, rec = run(repo)
    assert rec["status"] == "crash" and "put back" in rec["reason"], rec
    assert "evil" not in repo.git("branch")
    use(repo, isolation={"mode": "bwrap"}, runner__command=step)
    _result, rec = run(repo)
    assert rec["status"] == "keep", rec
    assert "evil" not in repo.git("branch")
    log = (repo.path / "work" / "runs" / rec["run_id"] / "runner.log").read_text()
    assert "not a git repository" in log


def test_describe_says_which_mode_and_why(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    use(repo, mutator__isolation={"network": True})
    task = load_task(str(repo.path / "tasks/demo/task.yaml"), repo.path)
    line = isolation.describe(task)
    assert "mutator: bwrap (network)" in line and "runner, scorer: bwrap" in line
    assert "bubblewrap 0." in line


def test_validate_prints_the_isolation_line(repo: Repo) -> None:
    result = repo.run("--task", "tasks/demo/task.yaml", command="validate")
    assert result.code == 0, result.stderr
    assert "isolation: mutator, runner, scorer: bwrap" in result.stdout


def test_init_scaffolds_isolation_and_the_sample_task_uses_it(tmp_path: Path) -> None:
    from loopengine.task import load_task as load

    project = Path(__file__).resolve().parent.parent
    sample = load(str(project / "tasks/skill-quality/task.yaml"), project)
    assert "isolation" in (project / "tasks/skill-quality/task.yaml").read_text()
    assert sample.isolation.mode in ("auto", "bwrap")
    r = Repo(tmp_path / "new")
    result = r.run("scaffolded", command="init")
    assert result.code == 0, result.stderr
    text = (r.path / "tasks/scaffolded/task.yaml").read_text()
    assert "isolation:" in text and "mode: auto" in text
    task = load(str(r.path / "tasks/scaffolded/task.yaml"), r.path)
    assert task.isolation.mode == "auto" and task.isolation.network is False


def test_a_killed_engine_takes_its_isolated_step_along_and_the_lost_record_says_bwrap(
        repo: Repo, isolated_env: Path) -> None:
    marker = f"loopengine-orphan-{uuid.uuid4().hex}"
    use(repo, isolation={"mode": "bwrap"},
        runner__command=f"setsid {PY} -c 'import time; time.sleep(300)' {marker} & wait")
    engine = subprocess.Popen([PY, "-m", "loopengine", "run", "--task", "tasks/demo/task.yaml"],
                              cwd=repo.path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _survivors(marker):
            assert time.monotonic() < deadline and engine.poll() is None
            time.sleep(0.05)
        engine.kill()  # SIGKILL: no cleanup of its own
        engine.wait()
        assert _no_survivors(marker) == []  # bwrap --die-with-parent ended the namespace
        nxt = repo.run(task="tasks/missing.yaml").record  # recovery of the dead run
        assert nxt["crash_kind"] == "config"
        [lost] = [r for r in repo.results() if r["run_id"] != nxt["run_id"]]
        assert lost["status"] == "crash" and lost["isolation"] == "bwrap", lost
        no_leftovers(repo, isolated_env)
    finally:
        if engine.poll() is None:
            engine.kill()
        _kill(_survivors(marker))
