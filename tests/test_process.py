"""process.py with real subprocesses and real signals: no mocks."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from loopengine.errors import Interrupted
from loopengine.process import (
    STDOUT_MARKER,
    TERM_GRACE_SECONDS,
    TOKEN_VAR,
    StepResult,
    kill_tagged,
    log_tail,
    run_step,
    step_env,
)

BIN = Path(__file__).parent / "bin"


def _bin(script: str, *args: object) -> str:
    return shlex.join([str(BIN / script), *map(str, args)])


def _run(
    command: str,
    tmp_path: Path,
    *,
    timeout: float = 10.0,
    log_path: Path | None = None,
    stdout_path: Path | None = None,
    env: dict[str, str] | None = None,
    on_line: object = None,
) -> StepResult:
    return run_step(
        "runner",
        command,
        cwd=tmp_path,
        env=step_env(os.environ, {}) if env is None else env,
        timeout=timeout,
        log_path=tmp_path / "logs" / "runner.log" if log_path is None else log_path,
        stdout_path=stdout_path,
        on_line=on_line,  # type: ignore[arg-type]
    )


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped by its parent) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _gone(pid: int, within: float = 1.0) -> bool:
    """SIGKILL is asynchronous: allow the kernel a moment to finish the exit."""
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _live_group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def _leftovers(marker: str) -> list[int]:
    """Live processes whose environment carries ``LOOPTEST_MARK=<marker>``."""
    needle = f"\0LOOPTEST_MARK={marker}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            environ = b"\0" + Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ and _alive(int(entry)):
            found.append(int(entry))
    return found


def _read_pid(path: Path) -> int:
    return int(path.read_text().strip())


@pytest.fixture
def tagged_sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# --- outcome and output --------------------------------------------------------------


def test_success(tmp_path: Path) -> None:
    result = _run("echo hello", tmp_path)
    assert result == StepResult(
        name="runner",
        exit_code=0,
        timed_out=False,
        duration=result.duration,
        log_path=tmp_path / "logs" / "runner.log",
        stdout_path=None,
    )
    assert result.ok
    assert 0 <= result.duration < 5
    assert result.log_path.read_text() == "hello\n"


def test_nonzero_exit_is_a_result_with_both_streams_in_the_log(tmp_path: Path) -> None:
    result = _run(_bin("exit_code.sh", 3), tmp_path)
    assert result.exit_code == 3
    assert not result.timed_out
    assert not result.ok
    log = result.log_path.read_text()
    assert "exit_code.sh: to stdout\n" in log
    assert "exit_code.sh: to stderr\n" in log


def test_killed_by_a_signal_reports_the_signal(tmp_path: Path) -> None:
    result = _run("kill -9 $$", tmp_path)
    assert result.exit_code == -signal.SIGKILL
    assert not result.timed_out
    assert not result.ok


def test_separate_stdout_is_captured_then_appended_to_the_log(tmp_path: Path) -> None:
    stdout_path = tmp_path / "out" / "scorer.stdout"
    result = _run(_bin("exit_code.sh", 0), tmp_path, stdout_path=stdout_path)
    assert result.ok
    assert result.stdout_path == stdout_path
    assert stdout_path.read_text() == "exit_code.sh: to stdout\n"
    assert result.log_path.read_text() == (
        f"exit_code.sh: to stderr\n{STDOUT_MARKER}\nexit_code.sh: to stdout\n"
    )


def test_stdout_marker_starts_a_line_of_its_own(tmp_path: Path) -> None:
    stdout_path = tmp_path / "scorer.stdout"
    result = _run("printf 'no newline' >&2; printf '{}'", tmp_path, stdout_path=stdout_path)
    assert stdout_path.read_text() == "{}"
    assert result.log_path.read_text() == f"no newline\n{STDOUT_MARKER}\n{{}}"


def test_log_is_appended_and_its_folder_created(tmp_path: Path) -> None:
    log_path = tmp_path / "work" / "runs" / "r1" / "mutator.log"
    _run("echo first", tmp_path, log_path=log_path)
    _run("echo second", tmp_path, log_path=log_path)
    assert log_path.read_text() == "first\nsecond\n"


def test_runs_in_cwd(tmp_path: Path) -> None:
    assert _run("pwd", tmp_path).log_path.read_text() == f"{tmp_path}\n"


def test_stdin_is_dev_null_even_when_ours_never_ends(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)  # a stdin that never reaches EOF: `cat` would hang on it
    try:
        result = _run("readlink /proc/$$/fd/0; cat; echo done", tmp_path, timeout=5)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert result.ok
    assert result.log_path.read_text() == "/dev/null\ndone\n"


def test_missing_cwd_raises_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    log_path = tmp_path / "logs" / "runner.log"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_step(
            "runner",
            "echo hi",
            cwd=missing,
            env=step_env(os.environ, {}),
            timeout=5,
            log_path=log_path,
        )
    assert not missing.exists()
    assert not log_path.exists()


def test_flood_never_blocks(tmp_path: Path) -> None:
    result = _run(_bin("flood.py", 200), tmp_path, timeout=60)
    assert result.ok  # a writer blocked on a full pipe would have timed out instead
    assert result.log_path.stat().st_size == 200 * 1024 * 1024
    result.log_path.unlink()  # pytest keeps recent tmp folders; do not hoard 200 MB


# --- timeouts and leftovers ----------------------------------------------------------


def test_timeout_kills_the_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # The shell ignores SIGTERM too, so only the SIGKILL that follows can end the step.
    command = f"trap '' TERM; {_bin('ignore_term.py', pidfile)}; echo never"
    started = time.monotonic()
    result = _run(command, tmp_path, timeout=1.0)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.exit_code is None
    assert not result.ok
    assert 1.0 <= elapsed < 1.0 + TERM_GRACE_SECONDS + 2
    log = result.log_path.read_text()
    assert "ready" in log  # the signals were ignored before the timeout hit
    assert "never" not in log
    assert _gone(_read_pid(pidfile))


def test_timeout_of_a_plain_hang(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run(_bin("sleep_forever.sh"), tmp_path, timeout=0.3)
    assert result.timed_out
    assert result.exit_code is None
    assert time.monotonic() - started < 0.3 + TERM_GRACE_SECONDS + 2


def test_background_job_in_the_group_dies_with_a_successful_step(tmp_path: Path) -> None:
    result = _run("sleep 60 & echo $! > bg.pid", tmp_path)
    assert result.ok
    assert _gone(_read_pid(tmp_path / "bg.pid"))


def test_detached_grandchild_dies_after_a_successful_step(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    result = _run(_bin("detach_child.sh", pidfile), tmp_path)
    assert result.ok
    pid = _read_pid(pidfile)
    assert f"detached {pid}" in result.log_path.read_text()
    assert _gone(pid)


def test_detached_grandchild_dies_after_a_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    result = _run(
        f"echo $$ > leader.pid; exec {_bin('detach_and_wait.sh', pidfile)}", tmp_path, timeout=0.5
    )
    assert result.timed_out
    assert _gone(_read_pid(pidfile))
    assert _live_group_members(_read_pid(tmp_path / "leader.pid")) == []


def test_a_detached_tree_that_keeps_forking_is_wiped_out(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    # A detached loop that starts a new orphan every 10 ms, racing the cleanup.
    spawner = "while :; do (sleep 60 &); sleep 0.01; done"
    command = (
        f"setsid /bin/sh -c {shlex.quote(spawner)} </dev/null >/dev/null 2>&1 & sleep 0.3; exit 0"
    )
    env = step_env(os.environ, {"LOOPTEST_MARK": marker})
    result = _run(command, tmp_path, env=env)
    assert result.ok
    deadline = time.monotonic() + 1
    while _leftovers(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _leftovers(marker) == []


def test_signals_that_keep_coming_do_not_cut_the_cleanup_short(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    raised = 0

    def inside_run_step(frame: FrameType | None) -> bool:
        while frame is not None:
            if frame.f_code is run_step.__code__:
                return True
            frame = frame.f_back
        return False

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if pidfile.exists() and inside_run_step(frame):
            raised += 1
            raise Interrupted(signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)  # every 2 ms, cleanup included
    try:
        with pytest.raises(Interrupted):
            _run(f"echo $$ > leader.pid; exec {_bin('detach_and_wait.sh', pidfile)}", tmp_path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert raised >= 2, "no signal arrived during the cleanup"
    assert _gone(_read_pid(pidfile))
    assert _live_group_members(_read_pid(tmp_path / "leader.pid")) == []


@pytest.mark.parametrize("exc_type", [Interrupted, KeyboardInterrupt])
def test_interrupt_propagates_after_the_step_is_killed(
    tmp_path: Path, exc_type: type[BaseException]
) -> None:
    leader_file = tmp_path / "leader.pid"
    grandchild_file = tmp_path / "grandchild.pid"

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if not grandchild_file.exists():  # not under way yet: look again shortly
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise Interrupted(signal.SIGINT) if exc_type is Interrupted else KeyboardInterrupt

    command = f"echo $$ > {leader_file}; exec {_bin('detach_and_wait.sh', grandchild_file)}"
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    started = time.monotonic()
    try:
        with pytest.raises(exc_type) as raised:
            _run(command, tmp_path, timeout=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 5
    if isinstance(raised.value, Interrupted):
        assert raised.value.signum == signal.SIGINT
    leader = _read_pid(leader_file)
    assert _gone(leader)
    assert _live_group_members(leader) == []
    assert _gone(_read_pid(grandchild_file))


# --- kill_tagged ---------------------------------------------------------------------


def test_kill_tagged_matches_the_exact_token_only(
    tagged_sleepers: list[subprocess.Popen[bytes]],
) -> None:
    token = uuid.uuid4().hex

    def sleeper(tag: str | None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
        if tag is not None:
            env[TOKEN_VAR] = tag
        proc = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
        tagged_sleepers.append(proc)
        return proc

    target, longer, untagged = sleeper(token), sleeper(token + "0"), sleeper(None)
    assert kill_tagged(token) == 1
    assert target.wait(timeout=2) == -signal.SIGKILL
    assert longer.poll() is None
    assert untagged.poll() is None
    assert kill_tagged(token) == 0
    with pytest.raises(ValueError):
        kill_tagged("")


# --- environment ---------------------------------------------------------------------


def test_step_env_drops_git_redirections_and_stale_tokens() -> None:
    dropped = {
        "GIT_DIR": "/elsewhere/.git",
        "GIT_WORK_TREE": "/elsewhere",
        "GIT_INDEX_FILE": "/elsewhere/.git/index",
        "GIT_OBJECT_DIRECTORY": "x",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": "x",
        "GIT_COMMON_DIR": "x",
        "GIT_NAMESPACE": "x",
        "GIT_PREFIX": "x",
        "GIT_CEILING_DIRECTORIES": "x",
        "GIT_DISCOVERY_ACROSS_FILESYSTEM": "1",
        "GIT_CONFIG": "x",
        "GIT_CONFIG_PARAMETERS": "'core.hooksPath'='/evil'",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.hooksPath",
        "GIT_CONFIG_VALUE_0": "/evil",
        "GIT_QUARANTINE_PATH": "x",
        "GIT_REFLOG_ACTION": "x",
        TOKEN_VAR: "stale",
    }
    kept = {"PATH": "/usr/bin:/bin", "GIT_AUTHOR_NAME": "A", "HOME": "/home/a"}
    base = {**dropped, **kept, "PYTHONDONTWRITEBYTECODE": ""}
    env = step_env(base, {"LOOPENGINE_RUN_ID": "r1", "HOME": "/sandbox"})
    assert env == {
        **kept,
        "HOME": "/sandbox",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LOOPENGINE_RUN_ID": "r1",
    }
    assert base[TOKEN_VAR] == "stale"  # the caller's mapping is not touched


def test_the_step_sees_the_clean_env_and_its_own_token(tmp_path: Path) -> None:
    base = {**os.environ, "GIT_DIR": "/elsewhere/.git", "GIT_INDEX_FILE": "/x"}
    stdout_path = tmp_path / "env.out"
    env = step_env(base, {"LOOPENGINE_RUN_ID": "r1"})
    tokens = []
    for _ in range(2):
        result = _run("env", tmp_path, env=env, stdout_path=stdout_path)
        assert result.ok
        seen = dict(
            line.split("=", 1) for line in stdout_path.read_text().splitlines() if "=" in line
        )
        assert "GIT_DIR" not in seen
        assert "GIT_INDEX_FILE" not in seen
        assert seen["PYTHONDONTWRITEBYTECODE"] == "1"
        assert seen["LOOPENGINE_RUN_ID"] == "r1"
        tokens.append(uuid.UUID(seen[TOKEN_VAR]))
    assert tokens[0] != tokens[1]
    assert TOKEN_VAR not in env


# --- on_line -------------------------------------------------------------------------


def test_on_line_reports_complete_new_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "runner.log"
    log_path.write_text("old line\n")
    lines: list[str] = []
    command = "for i in 1 2 3; do echo step $i; sleep 0.2; done; printf partial"
    result = _run(command, tmp_path, log_path=log_path, on_line=lines.append)
    assert result.ok
    assert lines, "no progress reported"
    assert set(lines) <= {"step 1", "step 2", "step 3"}
    assert lines[-1] == "step 3"
    assert len(lines) >= 2  # reported while running, not only at the end


def test_on_line_also_follows_captured_stdout(tmp_path: Path) -> None:
    lines: list[str] = []
    stdout_path = tmp_path / "scorer.stdout"
    result = _run(
        "echo to-stderr >&2; echo to-stdout",
        tmp_path,
        stdout_path=stdout_path,
        on_line=lines.append,
    )
    assert result.ok
    assert set(lines) == {"to-stderr", "to-stdout"}


# --- log_tail ------------------------------------------------------------------------


def test_log_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert log_tail(tmp_path / "missing.log") == ""


def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "step.log"
    path.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert log_tail(path) == "".join(f"line {i}\n" for i in range(9_960, 10_000))
    assert log_tail(path, lines=2) == "line 9998\nline 9999\n"
    small = tmp_path / "small.log"
    small.write_text("a\nb")
    assert log_tail(small) == "a\nb"


def test_log_tail_respects_the_byte_limit_and_starts_on_a_line(tmp_path: Path) -> None:
    path = tmp_path / "step.log"
    path.write_text("".join(f"{i:05d} " + "y" * 193 + "\n" for i in range(1_000)))  # 200 B
    tail = log_tail(path)
    assert len(tail.encode()) <= 4096
    assert tail.endswith("00999 " + "y" * 193 + "\n")
    assert tail.splitlines()[0].startswith("00980 ")  # 20 whole lines, no fragment
    one_line = tmp_path / "one.log"
    one_line.write_bytes(b"z" * 10_000)
    assert log_tail(one_line, max_bytes=100) == "z" * 100


def test_log_tail_reads_only_the_end_of_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.log"
    with open(path, "wb") as f:
        f.truncate(4 * 1024**3)  # sparse: 4 GiB that nobody can afford to read whole
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + b"".join(b"tail %d\n" % i for i in range(50)))
    if path.stat().st_blocks * 512 >= 1024**3:
        pytest.skip("this filesystem has no sparse files")
    started = time.monotonic()
    tail = log_tail(path, lines=3)
    assert time.monotonic() - started < 2
    assert tail == "tail 47\ntail 48\ntail 49\n"
    path.unlink()


def test_log_tail_replaces_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "step.log"
    path.write_bytes(b"ok\n\xff\xfe bad\n")
    assert log_tail(path) == "ok\n\ufffd\ufffd bad\n"


STAND_INS = [
    "sleep_forever.sh",
    "ignore_term.py",
    "detach_child.sh",
    "detach_and_wait.sh",
    "flood.py",
    "print_score.py",
    "exit_code.sh",
]


@pytest.mark.parametrize("script", STAND_INS)
def test_stand_ins_are_executable(script: str) -> None:
    path = BIN / script
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!")


def test_print_score(tmp_path: Path) -> None:
    out = subprocess.run(
        [BIN / "print_score.py", "0.5", "f1=0.9", "n=3"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout == '{"score": 0.5, "metrics": {"f1": 0.9, "n": 3}}\n'
    verbatim = subprocess.run([BIN / "print_score.py", "1e400"], capture_output=True, text=True)
    assert verbatim.stdout == '{"score": 1e400, "metrics": {}}\n'
    bad = subprocess.run([BIN / "print_score.py", "1", "x=abc"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert bad.stdout == ""
