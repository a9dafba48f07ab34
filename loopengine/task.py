"""The task file: strict loading into a frozen record, and the artifact globs.

The schema itself is ``loopengine.schema`` (pydantic models); this module reads the file
(``yaml.safe_load`` with duplicate keys refused), validates it, checks that the results
path is a safe place to write, and returns a ``Task``.

Errors name the file as the user typed it and the dotted field:
``tasks/x/task.yaml: runner.timeout_secs: unknown key (did you mean timeout_seconds?)``.
A ``TaskError``'s message is the first problem; its ``problems`` lists every one, in the
order a person fixes them (``loopengine validate`` prints them all).
"""

from __future__ import annotations

import functools
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loopengine.errors import LoopError, TaskError
from loopengine.paths import RESERVED_DIRS, write_problem

__all__ = [
    "RESERVED_DIRS", "Constraint", "Executor", "Isolation", "Parse", "Policy", "Step", "Task",
    "json_schema", "load_task", "match_artifact",
]


@dataclass(frozen=True)
class Isolation:
    """How one step is isolated (contract section 10): the task's ``isolation`` section
    with the step's own ``isolation`` keys laid over it."""

    mode: str = "auto"  # "auto" | "bwrap" | "none"
    network: bool = False
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()
    env: tuple[str, ...] = ()


@dataclass(frozen=True)
class Executor:
    """Where the runner and scorer measurements run (contract section 14)."""

    kind: str = "local"  # "local" | "ray"
    address: str = "auto"  # ray: the cluster to join ("auto": RAY_ADDRESS, else a local one)
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class Step:
    command: str
    cwd: str  # repo-relative posix, "." for the root
    timeout_seconds: float
    isolation: Isolation = Isolation()


@dataclass(frozen=True)
class Parse:
    format: str
    score_field: str
    metrics_field: str | None


@dataclass(frozen=True)
class Constraint:
    metric: str
    min: float | None
    max: float | None


@dataclass(frozen=True)
class Policy:
    min_improvement: float
    keep_when_no_baseline: bool
    commit_on_keep: bool
    repeats: int
    remeasure_baseline: bool
    confidence: float
    fingerprint: tuple[str, ...]
    effect: float | None = None  # the smallest improvement worth finding (None: one noise sd)


@dataclass(frozen=True)
class Task:
    path: Path
    display_path: str
    repo_root: Path
    task_dir: str
    id: str
    description: str
    include: tuple[str, ...]
    max_files_per_iteration: int
    max_changed_lines: int
    allowed_file_types: tuple[str, ...]
    mutator: Step
    runner: Step
    scorer: Step
    parse: Parse
    direction: str
    constraints: tuple[Constraint, ...]
    policy: Policy
    max_seconds: float
    results_path: str
    sandbox_reuse: bool
    isolation: Isolation = Isolation()  # the task-level section; each Step has its merged one
    executor: Executor = Executor()
    # Derived from the fields above; kept out of ==, hash and repr.
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


class _Duplicate(Exception):
    pass


def _dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            plain = part.isprintable() and part and not any(c.isspace() for c in part)
            text += ("." if text else "") + (part if plain else repr(part))
    return text


# --- loading ---------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, except that a key given twice is an error."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._reject_duplicates(node, (), set())
        return self.construct_document(node)

    def _reject_duplicates(self, node: yaml.Node, where: tuple[str | int, ...],
                           seen: set[int]) -> None:
        if id(node) in seen:  # an alias; also keeps "billion laughs" linear
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._reject_duplicates(item, (*where, i), seen)
        if not isinstance(node, yaml.MappingNode):
            return
        keys: set[object] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._reject_duplicates(value_node, where, seen)
                continue
            key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in keys:
                raise _Duplicate(f"{_dotted((*where, str(key)))}: duplicate key")
            keys.add(key)
            self._reject_duplicates(value_node, (*where, str(key)), seen)


def _locate(display: str, repo_root: Path) -> tuple[Path, Path, str]:
    """The task file's resolved path, the resolved root, and the repo-relative task_dir."""
    given = Path(display)
    try:
        mode = given.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise TaskError(f"{display}: no such task file{_resolved_against(given, repo_root)}") \
            from None
    except OSError as e:
        raise TaskError(f"{display}: cannot read the task file: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise TaskError(f"{display}: is a directory, not a task file")
    if not stat.S_ISREG(mode):  # reading a FIFO would block
        raise TaskError(f"{display}: is not a regular file")
    path, root = given.resolve(), repo_root.resolve()
    try:
        task_dir = path.parent.relative_to(root).as_posix()
    except ValueError:
        raise TaskError(f"{display}: the task file must be inside the repository {root}") from None
    return path, root, task_dir


def _resolved_against(given: Path, repo_root: Path) -> str:
    """Where a relative task path was looked for, when that is not the repository root
    (``--repo X --task PATH`` from another directory)."""
    if given.is_absolute():
        return ""
    cwd = Path.cwd().resolve()
    root = repo_root.resolve()
    if cwd == root:
        return ""
    hint = f" (the path was resolved against the current directory {cwd}, not the " \
        f"repository {root}"
    if (root / given).is_file():
        hint += f"; did you mean {os.path.relpath(root / given, cwd)}?"
    return hint + ")"


def _read(path: Path, display: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TaskError(f"{display}: cannot read the task file: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskError(f"{display}: the task file is not UTF-8 (byte {e.start})") from None


def _parse(text: str, display: str) -> object:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        problem = ", ".join(part for part in (e.context, e.problem) if part)
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise TaskError(f"{display}: invalid YAML: {' '.join(problem.split())}{where}") from None
    except yaml.reader.ReaderError as e:
        problem = f"{e.reason}: character #x{e.character:04x} at position {e.position}"
        raise TaskError(f"{display}: invalid YAML: {problem}") from None
    except (yaml.YAMLError, ValueError) as e:
        # The constructors raise plain ValueError: a 5,000-digit int, 2024-13-45, 0x_.
        raise TaskError(f"{display}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise TaskError(f"{display}: invalid YAML: nested too deeply") from None
    except _Duplicate as e:
        raise TaskError(f"{display}: {e}") from None


def _schema() -> Any:
    """``loopengine.schema``, imported on first use: pydantic is loaded only by a command
    that reads a task file, once, and the dataclasses above are all the rest imports.

    Its models are built with pydantic's plugins off (the documented
    ``PYDANTIC_DISABLE_PLUGINS``): looking for them reads the metadata of every installed
    package, and no plugin has any business hooking the validation of a task file."""
    import sys

    module = sys.modules.get("loopengine.schema")
    if module is not None:
        return module
    with _SCHEMA_LOCK:  # two threads must not restore each other's saved value
        saved = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
        os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
        try:
            from loopengine import schema
        finally:
            if saved is None:
                del os.environ["PYDANTIC_DISABLE_PLUGINS"]
            else:
                os.environ["PYDANTIC_DISABLE_PLUGINS"] = saved
    return schema


_SCHEMA_LOCK = threading.Lock()


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the task file, from the pydantic models."""
    return _schema().json_schema()  # type: ignore[no-any-return]


def read_document(display: str, repo_root: Path) -> tuple[dict[Any, Any], Path, Path, str]:
    """The task file's YAML mapping, not yet validated, with the resolved file and root
    and the repo-relative task folder.  Raises ``TaskError``."""
    file, root, task_dir = _locate(display, repo_root)
    document = _parse(_read(file, display), display)
    if document is None:
        raise TaskError(f"{display}: the task file is empty")
    if not isinstance(document, dict):
        kind = _schema().kind(document)
        raise TaskError(f"{display}: the task file must be a mapping, got {kind}")
    return document, file, root, task_dir


def load_task(path: str | os.PathLike[str], repo_root: Path) -> Task:
    """Read, validate and return the task file at ``path`` (as the user typed it).

    Raises ``TaskError``: its message is the first problem, ``problems`` all of them.
    """
    schema = _schema()
    display = os.fsdecode(path)
    document, file, root, task_dir = read_document(display, Path(repo_root))
    context = {"task_dir": task_dir, "results_path": _results_path_rule(root, file)}
    try:
        data = schema.validate(document, context)
    except schema.SchemaErrors as e:
        raise TaskError.many([f"{display}: {problem}" for problem in e.problems]) from None
    return _record(data, file, display, root, task_dir)


def _results_path_rule(root: Path, task_file: Path) -> Callable[[str, list[str]], str | None]:
    """``logging.results_path`` must be a safe place (``paths.write_problem``) and none of
    the files the engine or the user own: not the task file, not an artifact, not a file
    git tracks (an appended record would show up as the user's change, or be kept)."""

    def problem(rel: str, include: list[str]) -> str | None:
        found = write_problem(root, rel)
        if found:
            return found
        real = (root / rel).resolve()
        names = {rel, real.relative_to(root).as_posix()}
        if real == task_file:
            return "is the task file"
        if any(_glob_regex(pattern).fullmatch(name) for pattern in include for name in names):
            return "is an artifact (artifacts.include)"
        if _tracked(root, names):
            return "is a file git tracks"
        return None

    return problem


def _tracked(root: Path, names: set[str]) -> bool:
    from loopengine import git  # only when a task is loaded; the CLI starts without it

    specs = [f":(literal){name}" for name in sorted(names)]
    try:
        proc = git.run(git.Context(root), "ls-files", "-z", "--", *specs, check=False)
    except (OSError, LoopError):  # no git here at all: nothing is tracked
        return False
    return proc.returncode == 0 and bool(set(git.split_z(proc.stdout)) & names)


def _make_isolation(d: dict[str, Any], base: Isolation | None = None) -> Isolation:
    base = base or Isolation()
    return Isolation(
        mode=d.get("mode", base.mode),
        network=d.get("network", base.network),
        read=tuple(d.get("read", base.read)),
        write=tuple(d.get("write", base.write)),
        hide=tuple(d.get("hide", base.hide)),
        env=tuple(d.get("env", base.env)),
    )


def _make_step(d: dict[str, Any], isolation: Isolation) -> Step:
    return Step(d["command"], d["cwd"], float(d["timeout_seconds"]),
                _make_isolation(d["isolation"], isolation))


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _record(data: dict[str, Any], file: Path, display: str, root: Path, task_dir: str) -> Task:
    artifacts, mutation, policy = data["artifacts"], data["mutation"], data["policy"]
    parse = data["scorer"]["parse"]
    isolation = _make_isolation(data["isolation"])
    executor = data["executor"]
    return Task(
        path=file,
        display_path=display,
        repo_root=root,
        task_dir=task_dir,
        id=data["id"],
        description=data["description"],
        include=tuple(artifacts["include"]),
        max_files_per_iteration=artifacts["max_files_per_iteration"],
        max_changed_lines=mutation["max_changed_lines"],
        allowed_file_types=tuple(mutation["allowed_file_types"]),
        mutator=_make_step(data["mutator"], isolation),
        runner=_make_step(data["runner"], isolation),
        scorer=_make_step(data["scorer"], isolation),
        parse=Parse(parse["format"], parse["score_field"], parse["metrics_field"]),
        direction=data["objective"]["direction"],
        constraints=tuple(
            Constraint(c["metric"], _optional_float(c.get("min")), _optional_float(c.get("max")))
            for c in data["constraints"]
        ),
        policy=Policy(
            min_improvement=float(policy["min_improvement"]),
            keep_when_no_baseline=policy["keep_when_no_baseline"],
            commit_on_keep=policy["commit_on_keep"],
            repeats=policy["repeats"],
            remeasure_baseline=policy["remeasure_baseline"],
            confidence=float(policy["confidence"]),
            fingerprint=tuple(policy["fingerprint"]),
            effect=_optional_float(policy["effect"]),
        ),
        max_seconds=float(data["budget"]["max_seconds"]),
        results_path=data["logging"]["results_path"],
        sandbox_reuse=data["sandbox"]["reuse"],
        isolation=isolation,
        executor=Executor(
            kind=executor["kind"],
            address=executor["address"],
            num_cpus=float(executor["resources"]["num_cpus"]),
            num_gpus=float(executor["resources"]["num_gpus"]),
        ),
        data=data,
    )


# --- artifact globs --------------------------------------------------------------------


def match_artifact(task: Task, repo_rel_path: str) -> bool:
    """True when the repo-relative posix path is matched by ``artifacts.include``."""
    parts = repo_rel_path.split("/")
    # Defence in depth: a pattern like "**" must never reach into .git or work/.
    if parts[0] in RESERVED_DIRS or ".." in parts or repo_rel_path.startswith("/"):
        return False
    return any(_glob_regex(pattern).fullmatch(repo_rel_path) for pattern in task.include)


@functools.lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*``, ``?`` and ``[...]`` stay inside one path component; ``**`` crosses them."""
    parts = pattern.split("/")
    regex = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex.append(".+" if last else "(?:[^/]+/)*")
        else:
            regex.append(_component_regex(part) + ("" if last else "/"))
    return re.compile("".join(regex), re.DOTALL)


def _component_regex(part: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        char, i = part[i], i + 1
        end = _class_end(part, i) if char == "[" else -1
        if char == "*":
            if out[-1:] != ["[^/]*"]:  # runs of stars would backtrack badly
                out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end >= 0:
            out.append(_class_regex(part[i:end]))
            i = end + 1
        else:
            out.append(re.escape(char))
    return "".join(out)


def _class_end(part: str, start: int) -> int:
    """Index of the "]" closing a class opened just before ``start``; -1 if none (fnmatch)."""
    j = start + 1 if part.startswith("!", start) else start
    j = j + 1 if part.startswith("]", j) else j
    return part.find("]", j)


def _class_regex(body: str) -> str:
    negate = body.startswith("!")
    body = body[negate:]
    items: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            if low <= high:  # an empty range like z-a matches nothing, as in fnmatch
                items.append(f"{re.escape(low)}-{re.escape(high)}")
            k += 3
        else:
            items.append(re.escape(body[k]))
            k += 1
    if not items:
        return "[^/]" if negate else "(?!)"
    return f"[^/{''.join(items)}]" if negate else f"(?!/)[{''.join(items)}]"
