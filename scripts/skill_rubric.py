"""The SKILL.md rubric as data, shared by the sample task's mutator, evaluator and scorer.

Each check is something a reader of a skill file would recognise: front matter, a title,
the four sections an agent needs, and a few formatting rules.  A check passes or fails
as a whole and is worth ``weight`` points; the score is the sum over passing checks.

The order of ``RUBRIC`` is the order in which ``mutate_skill_task.py`` repairs failures.
Standard library only: the scripts run under whatever ``python`` is on PATH.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_LINE_LENGTH = 100
MIN_STEPS = 3

WHEN_TO_USE = ("when to use",)
STEPS = ("steps",)
EXAMPLES = ("examples", "example")
LIMITATIONS = ("limitations", "when not to use")

_HEADING = re.compile(r"^( {0,3})(#{1,6})(?:[ \t]+(.*?))?$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
_FIELD = re.compile(r"^([A-Za-z0-9_-]+):(.*)$")
NUMBERED_ITEM = re.compile(r"^( {0,3})(\d{1,9})[.)][ \t]+(\S.*)$")
BULLET_ITEM = re.compile(r"^( {0,3})[-*+][ \t]+(\S.*)$")
MARKER = re.compile(r"\b(?:TODO|FIXME|XXX|TBD)\b")
# What may stand in front of a note on its line: indentation, a list, quote or heading mark.
_LINE_PREFIX = re.compile(r"^\s*(?:(?:[-*+>]|\d{1,9}[.)]|#{1,6})\s+)*")


@dataclass(frozen=True)
class Heading:
    index: int  # line number, 0-based
    level: int
    text: str  # without the hashes and the optional closing sequence

    @property
    def key(self) -> str:
        """The heading text as sections are matched: case, spacing and a colon ignored."""
        return " ".join(self.text.rstrip(":").split()).lower()


@dataclass(frozen=True)
class Field:
    index: int  # line of ``key:``
    end: int  # one past its last continuation line
    value: str


@dataclass(frozen=True)
class Fence:
    start: int  # the opening fence line
    end: int | None  # the closing fence line; None when the block runs to the end

    def content(self, lines: Sequence[str]) -> list[str]:
        stop = len(lines) if self.end is None else self.end
        return list(lines[self.start + 1 : stop])


@dataclass(frozen=True)
class Section:
    heading: Heading
    end: int  # one past the last body line

    @property
    def body(self) -> range:
        return range(self.heading.index + 1, self.end)


@dataclass(frozen=True)
class Document:
    """A parsed skill file.  ``lines`` is ``text.split("\\n")``, so the last entry is
    what follows the final newline ("" for a file that ends with one)."""

    text: str
    lines: tuple[str, ...]
    front_matter: dict[str, Field] | None
    body_start: int  # first line after the front matter (0 when there is none)
    fences: tuple[Fence, ...]
    in_fence: tuple[bool, ...]  # fence lines themselves included
    headings: tuple[Heading, ...]

    def is_markdown(self, index: int) -> bool:
        """True for a line of the body that is not inside a fenced code block."""
        return index >= self.body_start and not self.in_fence[index]

    def section(self, names: Sequence[str]) -> Section | None:
        """The first ``## `` section whose heading is one of ``names``."""
        for position, heading in enumerate(self.headings):
            if heading.level == 2 and heading.key in names:
                end = len(self.lines)
                for later in self.headings[position + 1 :]:
                    if later.level <= 2:
                        end = later.index
                        break
                return Section(heading, end)
        return None


def is_placeholder(text: str) -> bool:
    """A line (or value) that is only a note to the author, like ``- TODO: examples``."""
    return MARKER.match(_LINE_PREFIX.sub("", text, count=1).strip(" \"'")) is not None


def has_content(text: str) -> bool:
    return bool(text.strip()) and not is_placeholder(text)


def parse_heading(line: str) -> tuple[int, str] | None:
    match = _HEADING.match(line.rstrip())
    if match is None:
        return None
    text = _CLOSING_HASHES.sub("", match.group(3) or "").strip()
    return len(match.group(2)), text


def _parse_front_matter(lines: Sequence[str]) -> tuple[dict[str, Field] | None, int]:
    if not lines or lines[0].rstrip() != "---":
        return None, 0
    for close in range(1, len(lines)):
        if lines[close].rstrip() == "---":
            break
    else:
        return None, 0
    fields: dict[str, Field] = {}
    index = 1
    while index < close:
        match = _FIELD.match(lines[index])
        if match is None:
            index += 1
            continue
        end = index + 1
        # Indented lines continue the value (a folded scalar or a ``>`` block).
        while end < close and lines[end][:1] in (" ", "\t"):
            end += 1
        parts = [match.group(2).strip(), *(line.strip() for line in lines[index + 1 : end])]
        if parts[0] in (">", "|", ">-", "|-", ">+", "|+"):
            parts = parts[1:]
        value = " ".join(part for part in parts if part)
        fields.setdefault(match.group(1), Field(index, end, value))
        index = end
    return fields, close + 1


def parse(text: str) -> Document:
    lines = tuple(text.split("\n"))
    front_matter, body_start = _parse_front_matter(lines)
    fences: list[Fence] = []
    in_fence = [False] * len(lines)
    headings: list[Heading] = []
    opening: tuple[int, str] | None = None  # (line, fence marker) of the open block
    for index in range(body_start, len(lines)):
        line = lines[index].rstrip()
        if opening is not None:
            in_fence[index] = True
            close = _FENCE_CLOSE.match(line)
            marker = opening[1]
            if close and close.group(1)[0] == marker[0] and len(close.group(1)) >= len(marker):
                fences.append(Fence(opening[0], index))
                opening = None
            continue
        fence = _FENCE_OPEN.match(line)
        if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
            opening = (index, fence.group(1))
            in_fence[index] = True
            continue
        heading = parse_heading(line)
        if heading is not None:
            headings.append(Heading(index, *heading))
    if opening is not None:
        fences.append(Fence(opening[0], None))
    return Document(
        text, lines, front_matter, body_start, tuple(fences), tuple(in_fence), tuple(headings)
    )


def numbered_items(doc: Document, section: Section) -> list[int]:
    """Lines of the section that are numbered list items with real content."""
    return [
        index
        for index in section.body
        if doc.is_markdown(index)
        and (match := NUMBERED_ITEM.match(doc.lines[index].rstrip())) is not None
        and has_content(match.group(3))
    ]


def code_blocks(doc: Document, section: Section) -> list[Fence]:
    """Closed fenced blocks inside the section that hold at least one real line."""
    return [
        fence
        for fence in doc.fences
        if fence.end is not None
        and section.heading.index < fence.start
        and fence.end < section.end
        and any(has_content(line) for line in fence.content(doc.lines))
    ]


def section_has_content(doc: Document, section: Section) -> bool:
    return any(
        has_content(doc.lines[index])
        and (not doc.is_markdown(index) or parse_heading(doc.lines[index]) is None)
        for index in section.body
    )


# --- the checks: each returns (passed, detail) ---------------------------------------

Outcome = tuple[bool, str]


def check_front_matter(doc: Document) -> Outcome:
    if doc.front_matter is None:
        return False, "no front matter: the file must start with a '---' block"
    missing = [
        key
        for key in ("name", "description")
        if key not in doc.front_matter or not has_content(doc.front_matter[key].value)
    ]
    if missing:
        return False, "front matter has no " + " or ".join(repr(key) for key in missing)
    return True, "front matter has a name and a description"


def title_headings(doc: Document) -> list[Heading]:
    return [heading for heading in doc.headings if heading.level == 1]


def check_title(doc: Document) -> Outcome:
    titles = title_headings(doc)
    if not titles:
        return False, "no '# ' title"
    if len(titles) > 1:
        lines = ", ".join(str(title.index + 1) for title in titles)
        return False, f"{len(titles)} '# ' titles (lines {lines}); a file has one"
    if not has_content(titles[0].text):
        return False, f"the title on line {titles[0].index + 1} is empty or a placeholder"
    if doc.headings[0] is not titles[0]:
        return False, "the '# ' title is not the first heading"
    return True, f"title: {titles[0].text}"


def _section_check(names: Sequence[str], what: str) -> Callable[[Document], Outcome]:
    shown = " or ".join(f"'## {name.capitalize()}'" for name in names)

    def check(doc: Document) -> Outcome:
        section = doc.section(names)
        if section is None:
            return False, f"no {shown} section"
        if not section_has_content(doc, section):
            return False, f"the '## {section.heading.text}' section is empty"
        return True, f"'## {section.heading.text}' {what}"

    return check


def check_steps(doc: Document) -> Outcome:
    section = doc.section(STEPS)
    if section is None:
        return False, "no '## Steps' section"
    count = len(numbered_items(doc, section))
    if count < MIN_STEPS:
        return False, f"'## Steps' has {count} numbered step(s); it needs {MIN_STEPS} or more"
    return True, f"'## Steps' has {count} numbered steps"


def check_examples(doc: Document) -> Outcome:
    section = doc.section(EXAMPLES)
    if section is None:
        return False, "no '## Examples' section"
    count = len(code_blocks(doc, section))
    if count == 0:
        return False, "'## Examples' has no fenced code block with an example"
    return True, f"'## Examples' has {count} fenced example(s)"


def _line_numbers(indexes: Sequence[int]) -> str:
    shown = ", ".join(str(index + 1) for index in indexes[:5])
    return shown + (f" and {len(indexes) - 5} more" if len(indexes) > 5 else "")


def _lines_where(doc: Document, bad: Callable[[str], bool], fault: str) -> Outcome:
    found = [index for index, line in enumerate(doc.lines) if bad(line)]
    if found:
        return False, f"{fault} on line(s) {_line_numbers(found)}"
    return True, f"no {fault}"


def check_trailing_whitespace(doc: Document) -> Outcome:
    return _lines_where(doc, lambda line: line != line.rstrip(), "trailing whitespace")


def check_tabs(doc: Document) -> Outcome:
    return _lines_where(doc, lambda line: "\t" in line, "tab character")


def check_line_length(doc: Document) -> Outcome:
    return _lines_where(
        doc,
        lambda line: len(line.rstrip("\r")) > MAX_LINE_LENGTH,
        f"line over {MAX_LINE_LENGTH} characters",
    )


def check_final_newline(doc: Document) -> Outcome:
    text = doc.text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        return False, "the file does not end with a newline"
    # A last line of spaces counts as blank: stripping trailing whitespace would
    # otherwise turn a passing ending into a failing one.
    if not text[:-1].rsplit("\n", 1)[-1].strip():
        return False, "the file ends with blank lines"
    return True, "the file ends with exactly one newline"


def check_markers(doc: Document) -> Outcome:
    return _lines_where(doc, lambda line: MARKER.search(line) is not None, "TODO/FIXME marker")


@dataclass(frozen=True)
class Check:
    id: str
    description: str
    weight: float
    test: Callable[[Document], Outcome]


RUBRIC: tuple[Check, ...] = (
    Check(
        "front-matter",
        "starts with a '---' front matter block that gives a name and a description",
        1.0,
        check_front_matter,
    ),
    Check("title", "has exactly one '# ' title, before any other heading", 1.0, check_title),
    Check(
        "when-to-use",
        "has a non-empty '## When to use' section",
        1.0,
        _section_check(WHEN_TO_USE, "says when to use the skill"),
    ),
    Check(
        "steps",
        f"has a '## Steps' section with a numbered list of {MIN_STEPS} or more steps",
        1.0,
        check_steps,
    ),
    Check(
        "examples",
        "has an '## Examples' section with at least one fenced code block",
        1.0,
        check_examples,
    ),
    Check(
        "limitations",
        "has a non-empty '## Limitations' (or '## When not to use') section",
        1.0,
        _section_check(LIMITATIONS, "says where the skill stops"),
    ),
    Check(
        "no-trailing-whitespace",
        "no line ends in spaces or tabs",
        1.0,
        check_trailing_whitespace,
    ),
    Check("no-tabs", "no tab characters", 1.0, check_tabs),
    Check(
        "line-length",
        f"no line is longer than {MAX_LINE_LENGTH} characters",
        1.0,
        check_line_length,
    ),
    Check(
        "final-newline",
        "the file ends with exactly one newline, after a line of text",
        1.0,
        check_final_newline,
    ),
    Check("no-todo", "no TODO, FIXME, XXX or TBD markers", 1.0, check_markers),
)
CHECKS_BY_ID: dict[str, Check] = {check.id: check for check in RUBRIC}
MAX_SCORE: float = sum(check.weight for check in RUBRIC)


@dataclass(frozen=True)
class Result:
    id: str
    description: str
    passed: bool
    weight: float
    detail: str

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "description": self.description,
            "passed": self.passed,
            "weight": self.weight,
            "detail": self.detail,
        }


def evaluate(text: str) -> list[Result]:
    doc = parse(text)
    results = []
    for check in RUBRIC:
        passed, detail = check.test(doc)
        results.append(Result(check.id, check.description, passed, check.weight, detail))
    return results


def line_count(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def resolve_artifact(task_dir: str, artifact: str) -> Path:
    """The artifact's path; it must be a regular file inside the task folder.

    A symbolic link is refused: writing through it could change a file outside the
    sandbox, which the engine would never see in its diff.
    """
    base = Path(task_dir).resolve()
    path = base / artifact
    if path.is_symlink():
        raise ValueError(f"{artifact}: is a symbolic link; the artifact must be a regular file")
    if not path.resolve().is_relative_to(base):
        raise ValueError(f"{artifact}: is outside the task folder {task_dir}")
    if not path.is_file():
        raise ValueError(f"{artifact}: no such file in the task folder {task_dir}")
    return path


def read_artifact(path: Path) -> str:
    # newline="" keeps the bytes' line endings, so a fix changes only what it means to.
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: is not UTF-8 text ({error.reason})") from None
