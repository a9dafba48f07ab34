"""Run one unisolated step as the child subreaper of all it starts; kill all of it at the end.

    python -I -S reaper.py ENGINE_PID COMMAND...

``process.run_step`` starts a step that runs without bubblewrap through this script (a
step under bwrap has a PID namespace instead).  With ``PR_SET_CHILD_SUBREAPER`` every
process the step starts stays below this one whatever it does: a child that calls
``setsid``, double-forks or hops pids (fork, parent exits, in a loop) is reparented here,
never to init.  When the command ends (or on SIGUSR1 from the engine, or when the engine
dies) the whole subtree is SIGKILLed, level by level, until none is left; a process that
was sent SIGKILL can fork no more, so this ends.  SIGTERM is passed on to the subtree.

The exit status is the command's (a command killed by a signal ends this process by the
same signal).  A script run by path, importing nothing heavy: it starts in ~10 ms.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    engine, command = int(argv[1]), argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write(f"loopengine reaper: prctl failed: {os.strerror(ctypes.get_errno())}\n")
        return 126
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, _noop)
    try:
        engine_fd = os.pidfd_open(engine)
    except OSError:  # the engine is already gone
        return 137
    if os.getppid() != engine:
        return 137
    child = os.posix_spawn(command[0], command, os.environ,
                           setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM,
                                      signal.SIGUSR1, signal.SIGCHLD))
    status = _wait(child, wake_r, engine_fd)
    kill_subtree()
    return _exit_with(status)


def _noop(signum: int, frame: object) -> None:
    """Signals only wake the loop, through the wakeup fd."""


def _wait(child: int, wake_r: int, engine_fd: int) -> int | None:
    """The command's wait status; None when told to stop first."""
    status = None
    while status is None:
        ready, _, _ = select.select([wake_r, engine_fd], [], [])
        if engine_fd in ready:
            return None
        signals = os.read(wake_r, 512) if wake_r in ready else b""
        if signal.SIGUSR1 in signals:
            return None
        if signal.SIGTERM in signals:
            _signal_all(signal.SIGTERM)  # those that left the group get it too
        status = _reap(child)
    return status


def _reap(child: int) -> int | None:
    """Reap every child that has exited; the command's status if it was one of them."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = status


def kill_subtree() -> None:
    """SIGKILL every descendant until none is left.

    Each round kills the whole subtree that can be seen; what a killed process forked just
    before is reparented here and killed in the next round.
    """
    while True:
        pids = _descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, 0)  # at least one of them is (or will be) a child to reap
        _reap(-1)


def _signal_all(signum: int) -> None:
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _descendants(top: int) -> list[int]:
    found: list[int] = []
    todo = [top]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids += [int(k) for k in f.read().split()]
        except FileNotFoundError:
            return _children_by_scan(pid)  # a kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return kids


def _children_by_scan(parent: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            kids.append(int(entry))
    return kids


def _exit_with(status: int | None) -> int:
    if status is None:
        return 128 + signal.SIGKILL
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP cannot be set
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        return 128 + signum  # a signal whose default is to be ignored
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
