"""Run one step's command: own session, timeout, output to a log file, nothing left behind.

A step is ``/bin/sh -c COMMAND`` in a new session (so its process group is ours to kill),
with stdin from ``/dev/null`` and stdout/stderr written straight to files: a child that
prints gigabytes can never block on a full pipe.  Every step carries a unique
``LOOPENGINE_STEP_TOKEN`` in its environment; children that leave the process group
(``setsid``, daemons) still carry it, and ``kill_tagged`` finds them through ``/proc``.

Nothing a step started may outlive it, even a process that drops the token and hops pids
(fork, ``setsid``, parent exits, in a loop): a step isolated by bubblewrap has its own PID
namespace, which the kernel empties when the step ends (``isolation.py`` builds its command
line); an unisolated step runs under ``reaper.py``, a child subreaper that every orphan of
the step is reparented to, and that kills the whole subtree when the step ends.

Two helper threads make the start and the cleanup safe against signal handlers that
raise (``Interrupted``, ``KeyboardInterrupt``), which Python runs in the main thread only:
see ``_Spawner`` and ``_Cleanup``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from loopengine import isolation as isolation_mod
from loopengine.errors import Interrupted
from loopengine.git import REPO_VAR_PREFIXES, REPO_VARS
from loopengine.task import Isolation

TOKEN_VAR = "LOOPENGINE_STEP_TOKEN"
STDOUT_MARKER = "--- stdout ---"

# How long a timed-out step gets between SIGTERM and SIGKILL.
TERM_GRACE_SECONDS = 0.5
# Wait in slices this short so that a signal handler raising ``Interrupted`` in the main
# thread is honoured promptly.
POLL_SECONDS = 0.05
# Children may fork while being killed; rescan /proc at most this many times.
KILL_ROUNDS = 20
# Never wait longer than this for a SIGKILLed leader to be reaped (a process stuck in the
# kernel, e.g. on a dead NFS mount, must not hang the engine).
REAP_SECONDS = 5.0
# ``on_line`` looks at no more than this much new output per poll.
_TAIL_WINDOW = 64 * 1024
REAPER = Path(__file__).resolve().parent / "reaper.py"



# A signal that the main thread took for a batch's worker threads: their running steps
# stop as if it had reached them (Python delivers signals to the main thread only).
_cancelled: int | None = None


def cancel_workers(signum: int | None) -> None:
    """Make every step running in a worker thread stop with ``Interrupted(signum)``;
    ``None`` lifts it."""
    global _cancelled
    _cancelled = signum


def check_cancelled() -> None:
    """Raise ``Interrupted`` in a worker thread once :func:`cancel_workers` was called."""
    signum = _cancelled
    if signum is not None and threading.current_thread() is not threading.main_thread():
        raise Interrupted(signum)


@dataclass(frozen=True)
class StepResult:
    """What one step did.  ``exit_code`` is None when the engine killed the step."""

    name: str
    exit_code: int | None
    timed_out: bool
    duration: float
    log_path: Path
    stdout_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def step_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` without inherited git redirections or step token, plus ``extra``."""
    env = {
        key: value
        for key, value in base.items()
        if key not in REPO_VARS and not key.startswith(REPO_VAR_PREFIXES) and key != TOKEN_VAR
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def log_tail(path: Path, lines: int = 40, max_bytes: int = 4096) -> str:
    """The last ``lines`` lines of ``path``, at most ``max_bytes`` of it; "" if missing."""
    if lines <= 0 or max_bytes <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return ""
    if start > 0:
        # Drop the partial first line, unless the whole window is one line.
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            data = data[cut + 1 :]
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept).decode("utf-8", errors="replace")


def kill_tagged(token: str, var: str = TOKEN_VAR) -> int:
    """SIGKILL every process whose environment has ``<var>=<token>``.

    ``var`` is ``LOOPENGINE_STEP_TOKEN`` for one step, ``LOOPENGINE_RUN_ID`` for every step
    of a run (recovery kills what a SIGKILLed run left running).  Rescans until no such
    process is left (bounded by ``KILL_ROUNDS``), since a child may fork while it is being
    killed.  Returns how many processes were signalled.
    """
    if not token:
        raise ValueError("kill_tagged needs a non-empty token")
    needle = f"\0{var}={token}\0".encode()
    killed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        found = False
        for pid in _other_pids():
            signalled = _kill_if_tagged(pid, needle)
            if signalled is None:
                continue
            found = True
            if signalled:
                killed.add(pid)
        if not found:
            break
        # A killed process shows its environment until the kernel has torn down its
        # memory; give it a moment rather than spinning.
        time.sleep(0.005)
    return len(killed)


def run_step(
    name: str,
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: Path,
    stdout_path: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    isolation: Isolation | None = None,
    places: isolation_mod.Places | None = None,
) -> StepResult:
    """Run ``command`` with ``/bin/sh -c`` in ``cwd``; kill it after ``timeout`` seconds.

    With ``isolation`` (and ``places``, the sandbox and the main tree) the step runs under
    bubblewrap when its mode gets it here; ``IsolationError`` when ``mode: bwrap`` cannot.
    A non-zero exit or a timeout is a result, not an exception.  Exceptions raised while
    the step runs (``Interrupted``, ``KeyboardInterrupt``) propagate, but only after the
    step and everything it started have been killed.
    """
    cwd = Path(cwd)
    if not cwd.is_dir():
        raise FileNotFoundError(f"working directory of step {name!r} does not exist: {cwd}")
    token = uuid.uuid4().hex
    full_env = dict(env)
    full_env[TOKEN_VAR] = token
    bwrap = None if isolation is None else isolation_mod.resolve(isolation)
    if bwrap is not None:
        assert isolation is not None
        if places is None:
            raise ValueError(f"step {name!r}: isolation needs the sandbox's places")
        argv = isolation_mod.argv(bwrap, isolation, places, cwd, command)
        full_env = isolation_mod.environment(full_env, isolation)
    else:
        argv = [sys.executable, "-I", "-S", str(REAPER), str(os.getpid()),
                "/bin/sh", "-c", command]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if stdout_path is not None:
        stdout_path.parent.mkdir(parents=True, exist_ok=True)

    timed_out = False
    start = time.monotonic()
    with contextlib.ExitStack() as files:
        log = files.enter_context(open(log_path, "ab"))
        out = log if stdout_path is None else files.enter_context(open(stdout_path, "wb"))
        tails = [] if on_line is None else _make_tails(on_line, log_path, stdout_path)
        spawner = _Spawner(argv, cwd, full_env, out, log)
        try:
            spawner.start()
            proc = spawner.wait()
            timed_out = not _wait_exit(proc.pid, start + timeout, tails)
            if timed_out:
                _signal_group(proc.pid, signal.SIGTERM)
                _wait_exit(proc.pid, time.monotonic() + TERM_GRACE_SECONDS, tails)
            for tail in tails:
                tail.poll()
        finally:
            cleanup = _Cleanup(spawner, token, log_path, stdout_path,
                               reaper=bwrap is None).run()
    # Only reached when no exception is on its way out: that one wins.
    if cleanup.interrupt is not None:
        raise cleanup.interrupt
    if cleanup.error is not None:
        raise cleanup.error
    exit_code = cleanup.exit_code
    if bwrap is not None and exit_code is not None and 128 < exit_code <= 128 + 64:
        # bwrap reports a command killed by signal n as exit status 128 + n, as a shell does.
        exit_code = 128 - exit_code
    if timed_out:
        exit_code = None
    return StepResult(
        name=name,
        exit_code=exit_code,
        timed_out=timed_out,
        duration=time.monotonic() - start,
        log_path=log_path,
        stdout_path=stdout_path,
    )


class _Spawner:
    """Starts the step's process from a helper thread.

    Python runs signal handlers in the main thread only.  Were ``Popen`` called there, an
    ``Interrupted`` raised between fork and the return of ``Popen`` would lose the pid of
    a child that is already running.  In a helper thread ``Popen`` always completes, and
    ``claim`` (in the main thread's ``finally``) either gets the process or stops it from
    ever being started.

    The thread lives on until ``release``: bwrap's ``--die-with-parent`` is a parent-death
    signal, which Linux sends when the *thread* that started the process ends.
    """

    def __init__(
        self, argv: list[str], cwd: Path, env: dict[str, str], out: BinaryIO, err: BinaryIO
    ) -> None:
        self._args = (argv, cwd, env, out, err)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._released = threading.Event()
        self._claimed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        threading.Thread(target=self._spawn, name="loopengine-spawn", daemon=True).start()

    def _spawn(self) -> None:
        argv, cwd, env, out, err = self._args
        try:
            with self._lock:
                if self._claimed:
                    return
                self._proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    close_fds=True,
                    start_new_session=True,
                )
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc
        finally:
            self._done.set()
        self._released.wait()

    def release(self) -> None:
        """The step is over: let the thread end."""
        self._released.set()

    def wait(self) -> subprocess.Popen[bytes]:
        """The started process; waits in slices so that the main thread stays interruptible."""
        while not self._done.wait(POLL_SECONDS):
            pass
        if self._error is not None:
            raise self._error
        assert self._proc is not None
        return self._proc

    def claim(self) -> subprocess.Popen[bytes] | None:
        """The process if one was started; afterwards none ever will be."""
        with self._lock:  # waits for a Popen that is under way
            self._claimed = True
            return self._proc


class _LineTail:
    """Reports the latest complete line appended to a file, reading only new bytes."""

    def __init__(self, path: Path, callback: Callable[[str], None]) -> None:
        self._path = path
        self._callback = callback
        try:
            self._pos = path.stat().st_size
        except OSError:
            self._pos = 0

    def poll(self) -> None:
        try:
            with open(self._path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size <= self._pos:
                    return
                start = max(self._pos, size - _TAIL_WINDOW)
                f.seek(start)
                data = f.read(size - start)
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            self._pos = start
            return
        self._pos = start + end + 1
        complete = data[:end].rstrip(b"\r\n")
        line = complete[complete.rfind(b"\n") + 1 :].rstrip(b"\r")
        if line:
            self._callback(line.decode("utf-8", errors="replace"))


def _make_tails(
    on_line: Callable[[str], None], log_path: Path, stdout_path: Path | None
) -> list[_LineTail]:
    paths = [log_path] if stdout_path is None else [log_path, stdout_path]
    return [_LineTail(path, on_line) for path in paths]


def _wait_exit(pid: int, deadline: float, tails: list[_LineTail]) -> bool:
    """Wait until ``pid`` has exited or ``deadline`` passes; True if it exited.

    The child is not reaped (``WNOWAIT``): while its zombie exists, its pid, and so the
    process group id, cannot be reused, and killing the group stays safe.
    """
    # Short steps are common (an iteration runs three): look again after 1 ms, 2 ms,
    # 4 ms ... up to POLL_SECONDS, rather than making each one last at least 50 ms.
    pause = 0.001
    while True:
        try:
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back; nothing left to wait for
            return True
        if exited is not None:
            return True
        for tail in tails:
            tail.poll()
        check_cancelled()
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, POLL_SECONDS)


class _Cleanup:
    """Kills what is left of a step, reaps it, and completes its log.

    The work runs in a thread of its own, where no signal handler can interrupt it: a
    second ^C, or signals arriving every few milliseconds, must never cut it short.  The
    thread is not a daemon, so even an interpreter that is exiting finishes it first.
    An interrupt that arrives meanwhile is kept in ``interrupt`` for the caller.
    """

    def __init__(
        self, spawner: _Spawner, token: str, log_path: Path, stdout_path: Path | None,
        *, reaper: bool,
    ) -> None:
        self._spawner = spawner
        self._reaper = reaper
        self._token = token
        self._log_path = log_path
        self._stdout_path = stdout_path
        self.exit_code: int | None = None
        self.error: OSError | None = None
        self.interrupt: BaseException | None = None

    def run(self) -> _Cleanup:
        worker = threading.Thread(target=self._work, name="loopengine-cleanup")
        try:
            worker.start()
        except RuntimeError:  # no thread to be had: clean up here, interruptible or not
            self._work()
            return self
        while True:
            try:
                while worker.is_alive():
                    worker.join(POLL_SECONDS)
                return self
            except (Interrupted, KeyboardInterrupt) as exc:
                self.interrupt = self.interrupt or exc

    def _work(self) -> None:
        try:
            self._kill_and_reap()
        finally:
            self._spawner.release()
        if self._stdout_path is not None:
            try:
                _append_stdout(self._log_path, self._stdout_path)
            except OSError as exc:
                self.error = exc

    def _kill_and_reap(self) -> None:
        proc = self._spawner.claim()
        if proc is not None and self._reaper:
            # The reaper kills the subtree it holds, then exits; killing it first would
            # hand its orphans to init.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGUSR1)
            _wait_exit(proc.pid, time.monotonic() + REAP_SECONDS, [])
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)
        kill_tagged(self._token)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.exit_code = proc.wait(timeout=REAP_SECONDS)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _append_stdout(log_path: Path, stdout_path: Path) -> None:
    """Append the captured stdout to the log, after a marker line of its own."""
    with open(log_path, "a+b") as log:
        size = log.seek(0, os.SEEK_END)
        newline = b"\n" if size and os.pread(log.fileno(), 1, size - 1) != b"\n" else b""
        log.write(newline + STDOUT_MARKER.encode() + b"\n")
        with contextlib.suppress(FileNotFoundError), open(stdout_path, "rb") as captured:
            shutil.copyfileobj(captured, log)


def _other_pids() -> list[int]:
    me = os.getpid()
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != me]


def _read_environ(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:  # gone, or not ours to read
        return None
    return b"\0" + data + (b"" if data.endswith(b"\0") else b"\0")


def _kill_if_tagged(pid: int, needle: bytes) -> bool | None:
    """SIGKILL ``pid`` if its environment holds ``needle``.

    None: not tagged (or gone, or unreadable).  True: signalled.  False: tagged, but the
    signal found no process (it had just exited).
    """
    environ = _read_environ(pid)
    if environ is None or needle not in environ:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd in this kernel or seccomp profile
        return _kill_pid(pid)
    try:
        # Read again now that the pidfd pins the process: the pid may have been reused.
        environ = _read_environ(pid)
        if environ is None or needle not in environ:
            return None
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        os.close(pidfd)


def _kill_pid(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def owner_alive(pid: object, host: object = None) -> bool:
    """Whether ``pid`` (recorded on ``host``) is still a loopengine process on this machine.

    A pid on another host cannot be checked here (False); a recycled pid belongs to some
    other program, so only a loopengine command line counts.
    """
    import socket

    if host and host != socket.gethostname():
        return False
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: the pid alone has to do
    return b"loopengine" in cmdline or b"run_task" in cmdline
