"""The task file's schema, declared once as pydantic v2 models.

pydantic does the walking: strict types (no bool for a number, no "40" for 40),
``extra="forbid"`` everywhere, every error with its location, and the JSON Schema of
``loopengine schema`` (``model_json_schema()``, inlined).  This module adds what pydantic
does not say the way our users read it: each error becomes one line,
``runner.timeout_secs: unknown key (did you mean timeout_seconds?)``, and the errors come
in the order a person fixes them (within a mapping, an unknown key first: a typo explains
the "missing required key" it causes, which is then not reported at all).

The checks pydantic has no words for (a repo-relative path, an artifact glob made
repo-relative from the task's folder, a constraint's bounds) are small validators that
raise ``PydanticCustomError`` with our message.
"""

from __future__ import annotations

import difflib
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from loopengine.paths import RESERVED_DIRS

# The context a document is validated in (``model_validate(..., context=...)``):
#   "task_dir"      the task's folder, repo-relative ("." at the root)
#   "results_path"  a callable: (normalized path, artifact patterns) -> problem or None
Context = Mapping[str, Any]


def _problem(text: str, at: str | None = None) -> PydanticCustomError:
    """An error whose message is ours; ``at`` names a key below the erroring value."""
    ctx: dict[str, Any] = {"problem": text}
    if at:
        ctx["at"] = at
    return PydanticCustomError("loopengine", "{problem}", ctx)


# --- values in messages ----------------------------------------------------------------

_KINDS: Final[dict[type, str]] = {
    bool: "bool",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    list: "list",
    dict: "mapping",
}


def kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def show(value: object) -> str:
    """A value for a one-line message: short, and spelled the YAML way for true/null."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if not isinstance(value, str | int | float):
        return kind(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "..." + text[-1]


# --- scalar checks -----------------------------------------------------------------------


def _nonblank(value: str) -> str:
    if not re.search(r"\S", value):
        raise _problem("must not be empty")
    return value


def _task_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise _problem(f"must match [A-Za-z0-9._-]+, got {show(value)}")
    if value in (".", ".."):
        raise _problem("must not be '.' or '..'")
    return value


def _suffix(value: str) -> str:
    if not re.fullmatch(r"\.[^/]+", value):
        raise _problem(f"must be a file suffix starting with '.', like '.md', got {show(value)}")
    return value


def _repo_path(value: str) -> str:
    """A path relative to the repository root, normalized ("." for the root)."""
    if value.startswith("/"):
        raise _problem(f"must be relative to the repository root, got {show(value)}")
    if ".." in value.split("/"):
        raise _problem("must not contain '..'")
    return posixpath.normpath(value)


def _file_path(value: str) -> str:
    norm = _repo_path(value)
    if norm == ".":
        raise _problem(f"must name a file, got {show(value)}")
    return norm


def _artifact_glob(value: str, info: ValidationInfo) -> str:
    """A task-relative path or glob, returned as a normalized repo-relative pattern."""
    if value.startswith("/"):
        raise _problem(f"must be relative to the task directory, got {show(value)}")
    task_dir = (info.context or {}).get("task_dir", ".")
    norm = posixpath.normpath(posixpath.join(task_dir, value))
    if norm == ".." or norm.startswith("../"):
        raise _problem(f"resolves outside the repository, got {show(value)}")
    top = norm.split("/")[0]
    if top in RESERVED_DIRS:
        raise _problem(f"must not point into {top}/, got {show(value)}")
    return norm





_STRING: Final = {"type": "string"}
Text = Annotated[str, AfterValidator(_nonblank),
                 WithJsonSchema({**_STRING, "minLength": 1, "pattern": r"\S"})]
TaskId = Annotated[str, AfterValidator(_task_id),
                   WithJsonSchema({**_STRING, "pattern": "^(?:[A-Za-z0-9._-]+)$",
                                   "not": {"enum": [".", ".."]}})]
Suffix = Annotated[str, AfterValidator(_suffix),
                   WithJsonSchema({**_STRING, "pattern": r"^(?:\.[^/]+)$"})]
_RELATIVE = r"^(?!/)(?!(?:[^/]*/)*\.\.(?:/|$))"
RepoPath = Annotated[str, AfterValidator(_repo_path),
                     WithJsonSchema({**_STRING, "pattern": _RELATIVE})]
FilePath = Annotated[str, AfterValidator(_file_path),
                     WithJsonSchema({**_STRING, "pattern": _RELATIVE, "minLength": 1})]
ArtifactGlob = Annotated[str, AfterValidator(_nonblank), AfterValidator(_artifact_glob),
                         WithJsonSchema({**_STRING, "pattern": r"^(?!/)[\s\S]*\S"})]
Count = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]


def _no_default(schema: dict[str, Any]) -> None:
    # An optional key without a default value: absent stays absent (a step's isolation key
    # takes the task's value; a constraint has min, max or both).  ``None`` is only how
    # pydantic spells "not given"; an explicit null is still a type error.
    schema.pop("default", None)


def _inherit(description: str) -> Any:
    return Field(None, description=description, json_schema_extra=_no_default)


# --- the sections ----------------------------------------------------------------------


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Artifacts(Section):
    include: list[ArtifactGlob] = Field(
        min_length=1,
        description="Paths or globs (*, ?, [...], **) of the files a candidate may change, "
        "relative to the folder holding the task file.",
    )
    max_files_per_iteration: Count = Field(1, description="At most this many changed files.")


class Mutation(Section):
    max_changed_lines: Count = Field(40, description="At most this many insertions + deletions.")
    allowed_file_types: list[Suffix] = Field(
        [], description="Suffixes a change may touch; [] = any.")


_MODE_TEXT = ("auto: bubblewrap where it works here, else unisolated with a warning; "
              "bwrap: bubblewrap or a crash; none: no OS isolation.")


class Isolation(Section):
    mode: Literal["auto", "bwrap", "none"] = Field("auto", description=_MODE_TEXT)
    network: bool = Field(False, description="May steps open network connections.")
    read: list[Text] = Field(
        [], description="Paths to make readable that would otherwise be hidden.")
    write: list[Text] = Field([], description="Host paths a step may write besides its sandbox.")
    hide: list[Text] = Field(
        [], description="More paths to hide, besides the default secret locations.")
    env: list[Text] = Field(
        [], description="Environment variables passed through besides the allowlist.")


class StepIsolation(Section):
    """A step's own isolation keys: only those given, laid over the task's section."""

    mode: Literal["auto", "bwrap", "none"] = _inherit(_MODE_TEXT)
    network: bool = _inherit("May steps open network connections.")
    read: list[Text] = _inherit("Paths to make readable that would otherwise be hidden.")
    write: list[Text] = _inherit("Host paths a step may write besides its sandbox.")
    hide: list[Text] = _inherit("More paths to hide, besides the default secret locations.")
    env: list[Text] = _inherit("Environment variables passed through besides the allowlist.")

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}


class Step(Section):
    type: Literal["command"] = Field(
        "command", description="How the step runs; 'command' is the only type.")
    command: Text = Field(description="Shell command, run by /bin/sh -c, in the step's cwd.")
    cwd: RepoPath = Field(".", description="Working directory, relative to the repository root.")
    timeout_seconds: Seconds = Field(
        600, description="Kill the step and all it started after this.")
    isolation: StepIsolation = Field(StepIsolation(), description="This step's own isolation keys.")


class Parse(Section):
    format: Literal["json"] = Field("json", description="The scorer's stdout is one JSON object.")
    score_field: Text = Field("score", description="Dotted path of the score in that object.")
    metrics_field: Text | None = Field(
        "metrics", description="Dotted path of the metrics, or null.")


class Scorer(Step):
    parse: Parse = Field(Parse(), description="How to read stdout.")


class Objective(Section):
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="Which is better.")


class Constraint(Section):
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["min"]}, {"required": ["max"]}]})

    metric: Text = Field(description="Name of a metric in the scorer's metrics.")
    min: float = Field(None, description="The metric must be >= this.",  # type: ignore[assignment]
                       json_schema_extra=_no_default)
    max: float = Field(None, description="The metric must be <= this.",  # type: ignore[assignment]
                       json_schema_extra=_no_default)

    @model_validator(mode="wrap")
    @classmethod
    def _bounds(cls, given: Any, handler: ModelWrapValidatorHandler[Constraint]) -> Constraint:
        model = handler(given)
        low, high = model.min, model.max
        if low is None and high is None:
            raise _problem("needs min or max (or both)")
        if low is not None and high is not None and low > high:
            # The bounds as written: "min (5), got 1", not pydantic's 5.0 and 1.0.
            raise _problem(f"must be >= min ({show(given['min'])}), got {show(given['max'])}",
                           at="max")
        return model

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}


class Policy(Section):
    min_improvement: Annotated[float, Field(ge=0)] = Field(
        0.0, description="A keep must beat the baseline by more.")
    keep_when_no_baseline: bool = Field(
        True, description="Keep or discard when the baseline cannot be evaluated because an "
        "artifact does not exist yet.")
    commit_on_keep: bool = Field(True, description="Make one git commit for each keep.")
    repeats: Count = Field(1, description="At most this many runner+scorer runs per candidate.")
    remeasure_baseline: bool = Field(
        False, description="Also measure the baseline, interleaved.")
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = Field(
        0.95, description="The confidence a keep needs that the improvement beats "
        "min_improvement.")
    fingerprint: list[Text] = Field(
        [], description="Globs of what evaluates the artifact; [] = every tracked file "
        "outside the artifacts.")
    effect: Annotated[float, Field(gt=0)] | None = Field(
        None, description="The smallest improvement worth finding (null: one standard "
        "deviation of the noise).")


class Budget(Section):
    max_seconds: Seconds = Field(3600, description="Wall-clock cap on the whole iteration.")


class Logging(Section):
    results_path: FilePath = Field(
        "work/results.jsonl", description="Repo-relative; where records are appended.")


class SandboxSection(Section):
    reuse: bool = Field(False, description="Reuse a pool of worktrees, reset before each use.")


class Resources(Section):
    num_cpus: Annotated[float, Field(ge=0)] = Field(1, description="CPUs per evaluation.")
    num_gpus: Annotated[float, Field(ge=0)] = Field(0, description="GPUs per evaluation.")


class Executor(Section):
    kind: Literal["local", "ray"] = Field("local", description="Where measurements run.")
    address: Text = Field("auto", description="ray: the cluster to join (auto: RAY_ADDRESS).")
    resources: Resources = Field(Resources(), description="What one evaluation needs.")


class TaskFile(Section):
    """The task file: twelve required sections and three optional ones."""

    model_config = ConfigDict(
        title="loopengine task file",
        json_schema_extra={"description": "One optimization task: its artifacts, steps, "
                           "objective and policy."},
    )

    id: TaskId = Field(description="The task's name, used in records and commit subjects.")
    description: str = Field(description="What the task optimizes, for people.")
    artifacts: Artifacts = Field(description="The files that make up the artifact.")
    mutation: Mutation = Field(description="Limits on one candidate's change.")
    mutator: Step = Field(description="Proposes a candidate: changes the artifacts.")
    runner: Step = Field(description="Evaluates a candidate.")
    scorer: Scorer = Field(
        description="Turns the runner's output into a score: prints one JSON object.")
    objective: Objective = Field(description="What counts as better.")
    constraints: list[Constraint] = Field(description="Bounds on the scorer's metrics.")
    policy: Policy = Field(description="When a candidate is kept.")
    budget: Budget = Field(description="Time limits.")
    logging: Logging = Field(description="Where records are appended.")
    sandbox: SandboxSection = Field(SandboxSection(), description="How candidates are isolated.")
    isolation: Isolation = Field(Isolation(), description="OS-level isolation of every step.")
    executor: Executor = Field(
        Executor(), description="Where the runner and scorer measurements run.")

    @field_validator("logging")
    @classmethod
    def _safe_results_path(cls, value: Logging, info: ValidationInfo) -> Logging:
        check: Callable[[str, list[str]], str | None] | None = (
            (info.context or {}).get("results_path"))
        artifacts = info.data.get("artifacts")
        if check is not None:
            problem = check(value.results_path, list(artifacts.include) if artifacts else [])
            if problem:
                raise _problem(f"{problem}, got {show(value.results_path)}", at="results_path")
        return value


SECTIONS: Final = tuple(TaskFile.model_fields)
REQUIRED: Final = tuple(name for name, f in TaskFile.model_fields.items() if f.is_required())


# --- validation: a document in, the filled-in data or every error out --------------------


def validate(document: dict[Any, Any], context: Context) -> dict[str, Any]:
    """The document with every default filled in and paths normalized, as plain data.

    Raises ``SchemaErrors`` with every problem, each ``dotted.path: message``, in the
    order a person fixes them.
    """
    try:
        model = TaskFile.model_validate(document, context=dict(context))
    except ValidationError as exc:
        raise SchemaErrors(_messages(exc, document)) from None
    data = model.model_dump()
    _keep_integers(data, document)
    return data


class SchemaErrors(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0])
        self.problems = problems


def _keep_integers(data: Any, given: Any) -> None:
    """``timeout_seconds: 30`` stays 30 in the data (pydantic makes it 30.0): the evaluation
    fingerprint hashes this data, and it must not change with the library."""
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(data, dict) and isinstance(given, dict):
        pairs = ((key, given[key]) for key in data if key in given)
    elif isinstance(data, list) and isinstance(given, list) and len(data) == len(given):
        pairs = enumerate(given)
    else:
        return
    for key, original in pairs:
        value = data[key]
        if (isinstance(value, float) and isinstance(original, int)
                and not isinstance(original, bool) and value == original):
            data[key] = original
        else:
            _keep_integers(value, original)


# pydantic's error type -> what a value of the wrong type was expected to be
_EXPECTED: Final = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "a bool",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
}
_BOUNDS: Final = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}
_UNKNOWN_KEY: Final = ("extra_forbidden", "invalid_key")


def _messages(exc: ValidationError, document: dict[Any, Any]) -> list[str]:
    errors = exc.errors(include_url=False, include_input=True)
    first_seen: dict[tuple[Any, ...], int] = {}
    for n, err in enumerate(errors):
        loc = tuple(err["loc"])
        for i in range(1, len(loc) + 1):
            first_seen.setdefault(loc[:i], n)

    def order(err: Any) -> tuple[tuple[int, int], ...]:
        loc = tuple(err["loc"])
        last = len(loc) - 1
        return tuple((0 if i == last and err["type"] in _UNKNOWN_KEY else 1,
                      first_seen[loc[:i + 1]]) for i in range(len(loc)))

    errors = sorted(errors, key=order)
    hinted = set()  # the keys an unknown key's hint names: their "missing" goes unsaid
    lines: list[tuple[tuple[Any, ...], str, str]] = []
    for err in errors:
        loc = tuple(err["loc"])
        where, message = _message(err, loc, document)
        if err["type"] in _UNKNOWN_KEY and "did you mean " in message:
            hinted.add((*loc[:-1], message.rsplit("did you mean ", 1)[1].rstrip("?)")))
        lines.append((loc, err["type"], f"{where}: {message}" if where else message))
    return [text for loc, kind_, text in lines if not (kind_ == "missing" and loc in hinted)]


def _message(err: Any, loc: tuple[Any, ...], document: dict[Any, Any]) -> tuple[str, str]:
    kind_, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    where = _dotted(loc, document)
    if kind_ == "loopengine":
        if ctx.get("at"):
            where = _dotted((*loc, ctx["at"]), document)
        return where, ctx["problem"]
    if kind_ in _UNKNOWN_KEY:
        return where, _unknown(str(loc[-1]), _known_keys(loc[:-1]))
    if kind_ == "missing":
        return where, "missing required section" if len(loc) == 1 else "missing required key"
    if kind_ == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        return where, "is too large"  # an int no float can hold: 10**400
    if kind_ == "int_type" and isinstance(value, float):
        return where, f"expected an integer, got {show(value)}"
    if kind_ in _EXPECTED:
        return where, f"expected {_EXPECTED[kind_]}, got {kind(value)}"
    if kind_ == "literal_error":
        allowed = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        return where, f"expected one of {', '.join(allowed)}, got {show(value)}"
    if kind_ == "finite_number":
        return where, f"must be a finite number, got {show(value)}"
    if kind_ in _BOUNDS:
        key, symbol = _BOUNDS[kind_]
        return where, f"must be {symbol} {show(_plain(ctx[key]))}, got {show(value)}"
    if kind_ == "too_short":
        return where, "must not be empty"
    text = str(err["msg"])
    return where, text[:1].lower() + text[1:]


def _plain(bound: object) -> object:
    """pydantic hands ``gt=0`` back as 0.0; the message says what the schema says: 0."""
    if isinstance(bound, float) and math.isfinite(bound) and bound.is_integer():
        return int(bound)
    return bound


def _dotted(loc: tuple[Any, ...], document: object) -> str:
    """``constraints[0].max``; a key that is not plainly printable is quoted."""
    text = ""
    node: object = document
    for part in loc:
        if isinstance(node, list) and isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if 0 <= part < len(node) else None
            continue
        key = str(part)
        plain = key.isprintable() and key and not any(c.isspace() for c in key)
        text += ("." if text else "") + (key if plain else repr(key))
        node = node.get(part) if isinstance(node, dict) else None
    return text


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The declared keys of the mapping at ``loc``, following the models."""
    model: Any = TaskFile
    for part in loc:
        if isinstance(part, int):
            continue  # a list item: the list's model is already in hand
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


# --- the JSON Schema ---------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the task file: pydantic's, with every ``$ref``
    inlined and the generated titles dropped, so that the simplest tools can read it."""
    raw = TaskFile.model_json_schema()
    definitions = raw.pop("$defs", {})
    body = _inline(raw, definitions)
    body.pop("title", None)
    description = body.pop("description")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "loopengine task file",
        "description": description,
        **body,
    }


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = _inline(definitions[ref.rsplit("/", 1)[1]], definitions)
        target.pop("title", None)
        out.update(target)
    for key, value in node.items():
        if key == "$ref":
            continue
        if key == "properties":
            out[key] = {name: _property(child, definitions) for name, child in value.items()}
        elif key == "const":  # one value is an enum of one, for tools that predate const
            out["enum"] = [value]
        elif key != "title":
            out[key] = _inline(value, definitions)
    return out


def _property(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A property's description first, then what it is, then its default."""
    inlined = _inline(node, definitions)
    description = inlined.pop("description", None)
    default = inlined.pop("default", ...)
    out = ({"description": description} if description else {}) | inlined
    return out if default is ... else out | {"default": default}
