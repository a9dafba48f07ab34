"""The task file: its schema as data, strict loading, and a JSON Schema made from it.

The schema is declared once, as data (``Required``, ``Optional``, ``Map``, ``Array`` and a
few scalar checks), the way pre-commit declares its config with cfgv.  One walker
validates a document against the declaration and fills in defaults; ``json_schema()``
walks the same declaration, so the two cannot drift.

Errors name the file as the user typed it and the dotted field:
``tasks/x/task.yaml: runner.timeout_secs: unknown key (did you mean timeout_seconds?)``.
The first error wins.  Within a mapping, unknown keys are reported before anything else
(a typo explains a "missing required key" below it); then the declared keys are checked
in the schema's order.
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
import os
import posixpath
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import yaml

from loopengine.errors import TaskError

# Repository-root folders that hold runtime state; no artifact may live there.
RESERVED_DIRS: Final = frozenset({".git", "work", ".venv", ".pytest_cache"})


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


# --- the walker's vocabulary ---------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Where in the document a value sits, and the task folder that relative paths use."""

    path: tuple[str | int, ...] = ()
    task_dir: str = "."

    def at(self, key: str | int) -> _Where:
        return _Where((*self.path, key), self.task_dir)

    def __str__(self) -> str:
        text = ""
        for part in self.path:
            if isinstance(part, int):
                text += f"[{part}]"
            else:
                plain = part.isprintable() and part and not any(c.isspace() for c in part)
                text += ("." if text else "") + (part if plain else repr(part))
        return text


class _Invalid(Exception):
    def __init__(self, where: _Where, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where.path else problem)


class Check(Protocol):
    def validate(self, value: object, where: _Where) -> Any: ...

    def schema(self) -> dict[str, Any]: ...


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Final = _NoDefault()


_KINDS: Final[dict[type, str]] = {
    bool: "bool",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    list: "list",
    dict: "mapping",
}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """A value for a one-line message: short, and spelled the YAML way for true/null."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if not isinstance(value, str | int | float):
        return _kind(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "..." + text[-1]


def _expected(what: str, value: object) -> str:
    return f"expected {what}, got {_kind(value)}"


@dataclass(frozen=True)
class Str:
    nonblank: bool = False
    pattern: str | None = None  # must match the whole string
    mismatch: str = ""  # the problem when the pattern does not match
    reserved: tuple[str, ...] = ()

    def validate(self, value: object, where: _Where) -> str:
        if not isinstance(value, str):
            raise _Invalid(where, _expected("a string", value))
        if self.nonblank and not re.search(r"\S", value):
            raise _Invalid(where, "must not be empty")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise _Invalid(where, f"{self.mismatch}, got {_show(value)}")
        if value in self.reserved:
            raise _Invalid(where, "must not be " + " or ".join(map(repr, self.reserved)))
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.nonblank:
            out |= {"minLength": 1, "pattern": r"\S"}
        if self.pattern:
            out["pattern"] = f"^(?:{self.pattern})$"
        if self.reserved:
            out["not"] = {"enum": list(self.reserved)}
        return out


# (Num's attribute, JSON Schema keyword, symbol for messages, the test a value must pass)
_BOUNDS: Final = (
    ("minimum", "minimum", ">=", operator.ge),
    ("exclusive_minimum", "exclusiveMinimum", ">", operator.gt),
    ("exclusive_maximum", "exclusiveMaximum", "<", operator.lt),
)


@dataclass(frozen=True)
class Num:
    integer: bool = False
    minimum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None

    def validate(self, value: object, where: _Where) -> int | float:
        what = "an integer" if self.integer else "a number"
        # bool is an int subclass; `timeout_seconds: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(where, _expected(what, value))
        if self.integer and not isinstance(value, int):
            raise _Invalid(where, f"expected an integer, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid(where, f"must be a finite number, got {_show(value)}")
        if not self.integer and isinstance(value, int):
            try:
                float(value)  # the record holds floats
            except OverflowError:
                raise _Invalid(where, "is too large") from None
        for attr, _, symbol, holds in _BOUNDS:
            bound = getattr(self, attr)
            if bound is not None and not holds(value, bound):
                raise _Invalid(where, f"must be {symbol} {_show(bound)}, got {_show(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        for attr, keyword, _, _ in _BOUNDS:
            if getattr(self, attr) is not None:
                out[keyword] = getattr(self, attr)
        return out


@dataclass(frozen=True)
class Bool:
    def validate(self, value: object, where: _Where) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(where, _expected("a bool", value))
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Enum:
    def __init__(self, *values: str) -> None:
        self.values = values

    def validate(self, value: object, where: _Where) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise _Invalid(where, f"expected one of {', '.join(self.values)}, got {_show(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True)
class Nullable:
    check: Check

    def validate(self, value: object, where: _Where) -> Any:
        return None if value is None else self.check.validate(value, where)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [self.check.schema(), {"type": "null"}]}


@dataclass(frozen=True)
class RepoPath:
    """A path relative to the repository root, returned normalized ("." for the root)."""

    file: bool = False  # must name something below the root

    def validate(self, value: object, where: _Where) -> str:
        text = Str().validate(value, where)
        if text.startswith("/"):
            problem = f"must be relative to the repository root, got {_show(text)}"
            raise _Invalid(where, problem)
        if ".." in text.split("/"):
            raise _Invalid(where, "must not contain '..'")
        norm = posixpath.normpath(text)
        if self.file and norm == ".":
            raise _Invalid(where, f"must name a file, got {_show(text)}")
        return norm

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "pattern": r"^(?!/)(?!(?:[^/]*/)*\.\.(?:/|$))"}
        return out | {"minLength": 1} if self.file else out


@dataclass(frozen=True)
class ArtifactGlob:
    """A task-relative path or glob, returned as a normalized repo-relative pattern."""

    def validate(self, value: object, where: _Where) -> str:
        text = Str(nonblank=True).validate(value, where)
        if text.startswith("/"):
            raise _Invalid(where, f"must be relative to the task directory, got {_show(text)}")
        norm = posixpath.normpath(posixpath.join(where.task_dir, text))
        if norm == ".." or norm.startswith("../"):
            raise _Invalid(where, f"resolves outside the repository, got {_show(text)}")
        top = norm.split("/")[0]
        if top in RESERVED_DIRS:
            raise _Invalid(where, f"must not point into {top}/, got {_show(text)}")
        return norm

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^(?!/)[\s\S]*\S"}


@dataclass(frozen=True)
class Array:
    of: Check
    nonempty: bool = False

    def validate(self, value: object, where: _Where) -> list[Any]:
        if not isinstance(value, list):
            raise _Invalid(where, _expected("a list", value))
        if self.nonempty and not value:
            raise _Invalid(where, "must not be empty")
        return [self.of.validate(item, where.at(i)) for i, item in enumerate(value)]

    def schema(self) -> dict[str, Any]:
        out = {"type": "array", "items": self.of.schema()}
        return out | {"minItems": 1} if self.nonempty else out


@dataclass(frozen=True)
class Required:
    key: str
    check: Check
    description: str


@dataclass(frozen=True)
class Optional:
    key: str
    check: Check
    default: object  # NO_DEFAULT: absent stays absent
    description: str


class Map:
    def __init__(
        self,
        *fields: Required | Optional,
        noun: str = "key",  # "section" at the top level
        # A rule across fields, and as much of it as the JSON Schema can say.
        rule: Callable[[dict[str, Any], _Where], None] | None = None,
        rule_schema: dict[str, Any] | None = None,
    ) -> None:
        self.fields, self.noun, self.rule = fields, noun, rule
        self.rule_schema = rule_schema or {}

    def validate(self, value: object, where: _Where) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Invalid(where, _expected("a mapping", value))
        known = [f.key for f in self.fields]
        for key in value:
            if key not in known:
                raise _Invalid(where.at(str(key)), _unknown(str(key), known))
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.key in value:
                out[f.key] = f.check.validate(value[f.key], where.at(f.key))
            elif isinstance(f, Required):
                raise _Invalid(where.at(f.key), f"missing required {self.noun}")
            elif f.default is not NO_DEFAULT:
                out[f.key] = f.check.validate(f.default, where.at(f.key))
        if self.rule:
            self.rule(out, where)
        return out

    def schema(self) -> dict[str, Any]:
        properties = {f.key: _field_schema(f) for f in self.fields}
        out: dict[str, Any] = {"type": "object", "properties": properties}
        required = [f.key for f in self.fields if isinstance(f, Required)]
        if required:
            out["required"] = required
        return out | {"additionalProperties": False} | self.rule_schema


def _field_schema(f: Required | Optional) -> dict[str, Any]:
    out = {"description": f.description, **f.check.schema()}
    if isinstance(f, Optional) and f.default is not NO_DEFAULT:
        out["default"] = f.check.validate(f.default, _Where())
    return out


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def _check_bounds(item: dict[str, Any], where: _Where) -> None:
    low, high = item.get("min"), item.get("max")
    if low is None and high is None:
        raise _Invalid(where, "needs min or max (or both)")
    if low is not None and high is not None and low > high:
        raise _Invalid(where.at("max"), f"must be >= min ({_show(low)}), got {_show(high)}")


# --- the task file ---------------------------------------------------------------------


_TEXT = Str(nonblank=True)
_COUNT = Num(integer=True, minimum=1)
_SECONDS = Num(exclusive_minimum=0)
_ID = Str(pattern=r"[A-Za-z0-9._-]+", mismatch="must match [A-Za-z0-9._-]+", reserved=(".", ".."))
_SUFFIX = Str(pattern=r"\.[^/]+", mismatch="must be a file suffix starting with '.', like '.md'")


_PATHS = Array(_TEXT)


def _isolation(defaults: bool) -> Map:
    """The ``isolation`` keys; a step's override has no defaults (absent: the task's)."""

    def opt(key: str, check: Check, default: object, text: str) -> Optional:
        return Optional(key, check, default if defaults else NO_DEFAULT, text)

    return Map(
        opt("mode", Enum("auto", "bwrap", "none"), "auto",
            "auto: bubblewrap where it works here, else unisolated with a warning; "
            "bwrap: bubblewrap or a crash; none: no OS isolation."),
        opt("network", Bool(), False, "May steps open network connections."),
        opt("read", _PATHS, [], "Paths to make readable that would otherwise be hidden."),
        opt("write", _PATHS, [], "Host paths a step may write besides its sandbox."),
        opt("hide", _PATHS, [], "More paths to hide, besides the default secret locations."),
        opt("env", _PATHS, [], "Environment variables passed through besides the allowlist."),
    )


def _step(does: str, *extra: Required | Optional) -> Map:
    return Map(
        Optional(
            "type", Enum("command"), "command", "How the step runs; 'command' is the only type."
        ),
        Required("command", _TEXT, f"Shell command, run by /bin/sh -c, that {does}."),
        Optional("cwd", RepoPath(), ".", "Working directory, relative to the repository root."),
        Optional("timeout_seconds", _SECONDS, 600, "Kill the step and all it started after this."),
        Optional("isolation", _isolation(False), {}, "This step's own isolation keys."),
        *extra,
    )


_ARTIFACTS = Map(
    Required(
        "include",
        Array(ArtifactGlob(), nonempty=True),
        "Paths or globs (*, ?, [...], **) of the files a candidate may change, "
        "relative to the folder holding the task file.",
    ),
    Optional("max_files_per_iteration", _COUNT, 1, "At most this many changed files."),
)

_MUTATION = Map(
    Optional("max_changed_lines", _COUNT, 40, "At most this many insertions + deletions."),
    Optional("allowed_file_types", Array(_SUFFIX), [], "Suffixes a change may touch; [] = any."),
)

_PARSE = Map(
    Optional("format", Enum("json"), "json", "The scorer's stdout is one JSON object."),
    Optional("score_field", _TEXT, "score", "Dotted path of the score in that object."),
    Optional("metrics_field", Nullable(_TEXT), "metrics", "Dotted path of the metrics, or null."),
)

_CONSTRAINT = Map(
    Required("metric", _TEXT, "Name of a metric in the scorer's metrics."),
    Optional("min", Num(), NO_DEFAULT, "The metric must be >= this."),
    Optional("max", Num(), NO_DEFAULT, "The metric must be <= this."),
    rule=_check_bounds,
    rule_schema={"anyOf": [{"required": ["min"]}, {"required": ["max"]}]},
)

_POLICY = Map(
    Optional("min_improvement", Num(minimum=0), 0.0, "A keep must beat the baseline by more."),
    Optional("keep_when_no_baseline", Bool(), True, "Keep the first scored candidate."),
    Optional("commit_on_keep", Bool(), True, "Make one git commit for each keep."),
    Optional("repeats", _COUNT, 1, "At most this many runner+scorer runs per candidate."),
    Optional("remeasure_baseline", Bool(), False, "Also measure the baseline, interleaved."),
    Optional(
        "confidence",
        Num(minimum=0.5, exclusive_maximum=1),
        0.95,
        "The confidence a keep needs that the improvement beats min_improvement.",
    ),
    Optional(
        "fingerprint",
        Array(_TEXT),
        [],
        "Globs of what evaluates the artifact; [] = every tracked file outside the artifacts.",
    ),
    Optional(
        "effect",
        Nullable(Num(exclusive_minimum=0)),
        None,
        "The smallest improvement worth finding (null: one standard deviation of the noise).",
    ),
)

_EXECUTOR = Map(
    Optional("kind", Enum("local", "ray"), "local", "Where measurements run."),
    Optional("address", _TEXT, "auto", "ray: the cluster to join (auto: RAY_ADDRESS)."),
    Optional(
        "resources",
        Map(
            Optional("num_cpus", Num(minimum=0), 1, "CPUs per evaluation."),
            Optional("num_gpus", Num(minimum=0), 0, "GPUs per evaluation."),
        ),
        {},
        "What one evaluation needs.",
    ),
)

SCHEMA: Final = Map(
    Required("id", _ID, "The task's name, used in records and commit subjects."),
    Required("description", Str(), "What the task optimizes, for people."),
    Required("artifacts", _ARTIFACTS, "The files that make up the artifact."),
    Required("mutation", _MUTATION, "Limits on one candidate's change."),
    Required("mutator", _step("changes the artifacts"), "Proposes a candidate."),
    Required("runner", _step("evaluates the candidate"), "Evaluates a candidate."),
    Required(
        "scorer",
        _step("prints one JSON object", Optional("parse", _PARSE, {}, "How to read stdout.")),
        "Turns the runner's output into a score.",
    ),
    Required(
        "objective",
        Map(Optional("direction", Enum("maximize", "minimize"), "maximize", "Which is better.")),
        "What counts as better.",
    ),
    Required("constraints", Array(_CONSTRAINT), "Bounds on the scorer's metrics."),
    Required("policy", _POLICY, "When a candidate is kept."),
    Required(
        "budget",
        Map(Optional("max_seconds", _SECONDS, 3600, "Wall-clock cap on the whole iteration.")),
        "Time limits.",
    ),
    Required(
        "logging",
        Map(Optional("results_path", RepoPath(file=True), "work/results.jsonl", "Repo-relative.")),
        "Where records are appended.",
    ),
    Optional(
        "sandbox",
        Map(Optional("reuse", Bool(), False, "Reuse a pool of worktrees, reset before each use.")),
        {},
        "How candidates are isolated.",
    ),
    Optional("isolation", _isolation(True), {}, "OS-level isolation of every step."),
    Optional("executor", _EXECUTOR, {}, "Where the runner and scorer measurements run."),
    noun="section",
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the task file, made from ``SCHEMA``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "loopengine task file",
        "description": "One optimization task: its artifacts, steps, objective and policy.",
        **SCHEMA.schema(),
    }


# --- loading ---------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, except that a key given twice is an error."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._reject_duplicates(node, _Where(), set())
        return self.construct_document(node)

    def _reject_duplicates(self, node: yaml.Node, where: _Where, seen: set[int]) -> None:
        if id(node) in seen:  # an alias; also keeps "billion laughs" linear
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._reject_duplicates(item, where.at(i), seen)
        if not isinstance(node, yaml.MappingNode):
            return
        keys: set[object] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._reject_duplicates(value_node, where, seen)
                continue
            key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in keys:
                raise _Invalid(where.at(str(key)), "duplicate key")
            keys.add(key)
            self._reject_duplicates(value_node, where.at(str(key)), seen)


def _locate(display: str, repo_root: Path) -> tuple[Path, Path, str]:
    """The task file's resolved path, the resolved root, and the repo-relative task_dir."""
    given = Path(display)
    try:
        mode = given.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise TaskError(f"{display}: no such task file") from None
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
    except _Invalid as e:  # a duplicate key
        raise TaskError(f"{display}: {e}") from None


def load_task(path: str | os.PathLike[str], repo_root: Path) -> Task:
    """Read, validate and return the task file at ``path`` (as the user typed it)."""
    display = os.fsdecode(path)
    file, root, task_dir = _locate(display, Path(repo_root))
    document = _parse(_read(file, display), display)
    if document is None:
        raise TaskError(f"{display}: the task file is empty")
    if not isinstance(document, dict):
        raise TaskError(f"{display}: the task file must be a mapping, got {_kind(document)}")
    try:
        data = SCHEMA.validate(document, _Where(task_dir=task_dir))
    except _Invalid as e:
        raise TaskError(f"{display}: {e}") from None
    return _record(data, file, display, root, task_dir)


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
