"""The sample task's mutator: repair the first failing rubric check of a SKILL.md.

    python mutate_skill_task.py --task-dir . --artifact fixtures/SKILL.md

Deterministic and small on purpose: one run makes one check pass and breaks none that
passed, so an agent can watch the score climb one point per iteration.  When every check
passes the file is left alone.  No file but the artifact is ever written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence

# The engine diffs the whole sandbox; a __pycache__ beside the scripts is not ours to add.
sys.dont_write_bytecode = True

import skill_rubric as rubric  # noqa: E402
from skill_rubric import Document, Section, has_content, parse  # noqa: E402

WIDTH = rubric.MAX_LINE_LENGTH

WHEN_TO_USE_TEXT = [
    "- The request matches the description in the front matter.",
    "- The inputs the steps below rely on are at hand, or the user can supply them.",
]
GENERIC_STEPS = [
    "Read the request and gather the inputs this skill needs.",
    "Work through the task as this file describes, one step at a time.",
    "Check the result against the request before handing it back.",
]
LIMITATIONS_TEXT = [
    "- Only as good as its inputs: ask for what is missing rather than guess.",
    "- Not a substitute for a person reviewing the result.",
]
SECTION_ORDER = (rubric.WHEN_TO_USE, rubric.STEPS, rubric.EXAMPLES, rubric.LIMITATIONS)
SECTION_NAMES = frozenset(name for names in SECTION_ORDER for name in names)

# A word that would change a wrapped line's meaning if it started the line (a heading,
# list, quote, table, fence or setext underline), so wrapping never breaks before it.
_RISKY_START = re.compile(r"^(?:[#>|<]|`{3}|~{3}|[-*+=]+$|\d{1,9}[.)]$)")
_LIST_PREFIX = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])([ \t]+)")
_QUOTE_PREFIX = re.compile(r"^\s*>[> ]*")
_HEADING_PREFIX = re.compile(r"^ {0,3}#{1,6}[ \t]+")
_FENCE_MARKER = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_MALFORMED_TITLE = re.compile(r"^#([^#\s].*)$")
_INLINE_MARKER = re.compile(r"[ \t]*\b(?:TODO|FIXME|XXX|TBD)\b(?:[ \t]*:)?")
_YAML_PLAIN_UNSAFE = re.compile(r"^[-?:,\[\]{}#&*!|>'\"%@`\s]|: | #|:$|\s$")
_YAML_SPECIAL = re.compile(r"^(?:[-+.\d]+|true|false|yes|no|on|off|null|~)$", re.IGNORECASE)


# --- text helpers ------------------------------------------------------------------


def join(lines: Sequence[str]) -> str:
    return "\n".join(lines)


def wrap_words(words: Sequence[str], first: str, rest: str) -> list[str]:
    """Greedy wrap to WIDTH: ``first`` opens the first line, ``rest`` the others."""
    tokens: list[str] = []
    for word in words:
        if tokens and _RISKY_START.match(word):
            tokens[-1] += " " + word
        else:
            tokens.append(word)
    lines: list[str] = []
    current, empty = first, True
    for token in tokens:
        separator = "" if empty else " "
        if len(current) + len(separator) + len(token) <= WIDTH:
            current, empty = current + separator + token, False
            continue
        if not empty:
            lines.append(current)
            current, empty = rest, True
        while len(current) + len(token) > WIDTH:  # a word longer than a line: split it
            room = max(WIDTH - len(current), 1)
            lines.append(current + token[:room])
            token, current = token[room:], rest
        current, empty = current + token, not token
    lines.append(current)
    return [line.rstrip() for line in lines]


def rebuild(
    lines: Sequence[str], replace: dict[int, list[str]], insert: dict[int, list[str]]
) -> list[str]:
    """``lines`` with some lines replaced (by zero or more lines) and blocks inserted
    before given indexes; all indexes refer to the original ``lines``."""
    out: list[str] = []
    for index, line in enumerate(lines):
        out.extend(insert.get(index, []))
        out.extend(replace.get(index, [line]))
    out.extend(insert.get(len(lines), []))
    return out


def insert_block(lines: list[str], at: int, block: Sequence[str]) -> None:
    """Insert ``block`` before ``lines[at]``, with a blank line on each side as needed."""
    before = [""] if at > 0 and lines[at - 1].strip() else []
    after = [""] if at < len(lines) and lines[at].strip() else []
    lines[at:at] = [*before, *block, *after]


def add_block(doc: Document, start: int, stop: int, block: Sequence[str]) -> str:
    """The text with ``block`` added after the last non-blank line of ``start:stop``.

    A code block that is never closed runs to the end of the file, and anything added
    after it would land inside it: it is closed first.
    """
    lines = list(doc.lines)
    at = start
    for index in range(start, stop):
        if lines[index].strip():
            at = index + 1
    for fence in doc.fences:
        opening = _FENCE_MARKER.match(lines[fence.start])
        if fence.end is None and fence.start < at and opening:
            lines.insert(at, opening.group(1))
            at += 1
    insert_block(lines, at, block)
    return join(lines)


def first_sentence(doc: Document) -> str | None:
    """The first sentence of the first prose paragraph, if there is one."""
    paragraph: list[str] = []
    for index in range(doc.body_start, len(doc.lines)):
        line = doc.lines[index].strip()
        prose = (
            doc.is_markdown(index)
            and has_content(line)
            and (line[0].isalnum() or line[0] in "\"'(*_[")
            and not rubric.NUMBERED_ITEM.match(line)
            and not rubric.BULLET_ITEM.match(line)
        )
        if prose:
            paragraph.append(line)
        elif paragraph:
            break
    if not paragraph:
        return None
    text = " ".join(" ".join(paragraph).split())
    match = re.match(r"(.+?[.!?])(?=\s|$)", text)
    sentence = match.group(1) if match else text
    if len(sentence) > 300:
        sentence = sentence[:300].rsplit(" ", 1)[0] + "..."
    return sentence


def title_text(doc: Document) -> str | None:
    """The text of the title as the file has it: a '# ' heading or a '#Title' line."""
    for heading in rubric.title_headings(doc):
        if has_content(heading.text):
            return heading.text
    for index in range(doc.body_start, len(doc.lines)):
        match = _MALFORMED_TITLE.match(doc.lines[index].strip())
        if doc.is_markdown(index) and match and has_content(match.group(1)):
            return match.group(1).strip()
    return None


def field_value(doc: Document, key: str) -> str | None:
    if doc.front_matter is None or key not in doc.front_matter:
        return None
    value = doc.front_matter[key].value
    return value if has_content(value) else None


def skill_name(doc: Document) -> str:
    name = field_value(doc, "name")
    if name:
        return name.strip("\"'")
    source = title_text(doc) or " ".join((first_sentence(doc) or "").split()[:5])
    slug = re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-")[:64].strip("-")
    return slug or "skill"


def skill_description(doc: Document) -> str:
    description = field_value(doc, "description")
    if description:
        return description.strip("\"'")
    sentence = first_sentence(doc)
    if sentence:
        return sentence
    title = title_text(doc) or skill_name(doc).replace("-", " ")
    return f"Instructions for {title}."


def yaml_field(key: str, value: str) -> list[str]:
    """``key: value`` as YAML, quoted when a plain scalar would misread, wrapped to WIDTH."""
    if _YAML_PLAIN_UNSAFE.search(value) or _YAML_SPECIAL.match(value) or not value:
        value = json.dumps(value, ensure_ascii=False)
    return wrap_words(value.split(), f"{key}: ", "  ")


# --- one fix per check ------------------------------------------------------------


def fix_front_matter(doc: Document) -> str:
    lines = list(doc.lines)
    name_lines = yaml_field("name", skill_name(doc))
    description_lines = yaml_field("description", skill_description(doc))
    if doc.front_matter is None:
        block = ["---", *name_lines, *description_lines, "---"]
        return join([*block, *([""] if lines[0].strip() else []), *lines])
    replace: dict[int, list[str]] = {}
    insert: dict[int, list[str]] = {}
    for key, new, insert_at in (
        ("name", name_lines, 1),
        ("description", description_lines, doc.body_start - 1),
    ):
        field = doc.front_matter.get(key)
        if field is None:
            insert.setdefault(insert_at, []).extend(new)
        elif not has_content(field.value):
            replace[field.index] = new
            for continuation in range(field.index + 1, field.end):
                replace[continuation] = []
    return join(rebuild(lines, replace, insert))


def demote(line: str) -> list[str]:
    """An H1 as an H2 (the extra '#' may push it past the width: then it wraps)."""
    demoted = re.sub(r"^( {0,3})#", r"\1##", line, count=1)
    if len(demoted.rstrip("\r")) <= WIDTH or len(line.rstrip("\r")) > WIDTH:
        return [demoted]
    prefix = _HEADING_PREFIX.match(demoted)
    assert prefix is not None
    return wrap_words(demoted[prefix.end() :].split(), prefix.group(0), "")


def shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    cut = text[: width + 1].rsplit(" ", 1)[0]
    return cut if 0 < len(cut) <= width else text[:width]


def fix_title(doc: Document) -> str:
    lines = list(doc.lines)
    titles = rubric.title_headings(doc)
    real = [heading for heading in titles if has_content(heading.text)]
    if real and doc.headings[0] is real[0]:
        extra = {heading.index: demote(lines[heading.index]) for heading in titles[1:]}
        return join(rebuild(lines, extra, {}))
    first_heading = doc.headings[0].index if doc.headings else len(lines)
    malformed = [
        index
        for index in range(doc.body_start, len(lines))
        if doc.is_markdown(index)
        and (match := _MALFORMED_TITLE.match(lines[index].strip())) is not None
        and has_content(match.group(1))
    ]
    if not titles and malformed and malformed[0] < first_heading:
        fixed = "# " + lines[malformed[0]].strip()[1:].strip()
        if len(fixed) <= WIDTH:
            lines[malformed[0]] = fixed
            return join(lines)
    # Otherwise: one fresh title at the top of the body, the old ones moved or demoted.
    title = title_text(doc) or skill_name(doc).replace("-", " ").capitalize()
    title = shorten(title, WIDTH - 2)
    # A heading line can move (its section's lines join the one before), but a '#Title'
    # line below a heading is that section's text, and stays.
    replace: dict[int, list[str]] = {real[0].index: []} if real else {}
    for heading in titles:
        replace.setdefault(heading.index, demote(lines[heading.index]))
    lines = rebuild(lines, replace, {})  # only body lines go, so body_start still holds
    at = doc.body_start
    while at < len(lines) - 1 and not lines[at].strip():
        at += 1
    insert_block(lines, at, [f"# {title}"])
    return join(lines)


def with_section(doc: Document, names: Sequence[str], title: str, body: list[str]) -> Document:
    """``doc`` with a ``## title`` section holding ``body`` when it has none for ``names``.

    A new section goes before the next of the standard sections that exists, or at the
    end; either way it only splits the file at a heading or at its end, so every other
    section keeps exactly the lines it had.
    """
    if doc.section(names) is not None:
        return doc
    block = [f"## {title}", "", *body]
    later = SECTION_ORDER[SECTION_ORDER.index(tuple(names)) + 1 :]
    found = [section.heading.index for other in later if (section := doc.section(other))]
    if not found:
        return parse(add_block(doc, doc.body_start, len(doc.lines), block))
    lines = list(doc.lines)
    insert_block(lines, min(found), block)
    return parse(join(lines))


def append_to_section(doc: Document, section: Section, block: list[str]) -> str:
    return add_block(doc, section.heading.index + 1, section.end, block)


def _prose_section_fix(
    names: Sequence[str], title: str, text: list[str]
) -> Callable[[Document], str]:
    def fix(doc: Document) -> str:
        doc = with_section(doc, names, title, text)
        section = doc.section(names)
        assert section is not None
        if rubric.section_has_content(doc, section):
            return doc.text
        return append_to_section(doc, section, text)

    return fix


def fix_steps(doc: Document) -> str:
    numbered = [f"{number}. {step}" for number, step in enumerate(GENERIC_STEPS, 1)]
    doc = with_section(doc, rubric.STEPS, "Steps", numbered)
    section = doc.section(rubric.STEPS)
    assert section is not None
    items = []
    for index in section.body:
        line = doc.lines[index]
        match = rubric.NUMBERED_ITEM.match(line) or rubric.BULLET_ITEM.match(line)
        if doc.is_markdown(index) and match and has_content(match.group(match.lastindex or 0)):
            items.append(index)
    if not items:
        return append_to_section(doc, section, numbered[: rubric.MIN_STEPS])
    # Bullets become numbered steps, then generic steps make up the number.
    replace: dict[int, list[str]] = {}
    for number, index in enumerate(items, 1):
        bullet = rubric.BULLET_ITEM.match(doc.lines[index])
        if bullet:
            marker = f"{number}. "
            step = f"{bullet.group(1)}{marker}{bullet.group(2)}"
            if len(step.rstrip("\r")) > WIDTH:
                indent = bullet.group(1)
                hanging = indent + " " * len(marker)
                replace[index] = wrap_words(bullet.group(2).split(), indent + marker, hanging)
            else:
                replace[index] = [step]
    missing = rubric.MIN_STEPS - len(items)
    insert: dict[int, list[str]] = {}
    if missing > 0:
        after = items[-1] + 1
        while after < section.end and doc.lines[after][:1] in (" ", "\t"):
            after += 1  # the last step's continuation lines
        steps = GENERIC_STEPS[-missing:]
        first = len(items) + 1
        insert[after] = [f"{number}. {step}" for number, step in enumerate(steps, first)]
    return join(rebuild(doc.lines, replace, insert))


def example_block(doc: Document) -> list[str]:
    request = skill_description(doc)
    fence = "`" * max([3, *(len(run) + 1 for run in re.findall(r"`+", request))])
    return [
        "A request this skill is meant for:",
        "",
        fence + "text",
        *wrap_words(request.split(), "", ""),
        fence,
    ]


def fix_examples(doc: Document) -> str:
    block = example_block(doc)
    doc = with_section(doc, rubric.EXAMPLES, "Examples", block)
    section = doc.section(rubric.EXAMPLES)
    assert section is not None
    if rubric.code_blocks(doc, section):
        return doc.text
    return append_to_section(doc, section, block)


def fix_trailing_whitespace(doc: Document) -> str:
    return join([line.rstrip() for line in doc.lines])


def _untab(line: str) -> str:
    # Indentation keeps its width (it can nest a list); a tab elsewhere becomes a space,
    # and so does any tab whose expansion would push the line past the length limit.
    indent = len(line) - len(line.lstrip(" \t"))
    expanded = line[:indent].replace("\t", "    ") + line[indent:].replace("\t", " ")
    if len(expanded.rstrip("\r")) > WIDTH >= len(line.rstrip("\r")):
        return line.replace("\t", " ")
    return expanded


def fix_tabs(doc: Document) -> str:
    return join([_untab(line) for line in doc.lines])


def _wrap_line(doc: Document, index: int) -> list[str]:
    line = doc.lines[index]
    words = line.split()
    if not words:
        return [""]
    indent = line[: len(line) - len(line.lstrip())]
    if 0 < index < doc.body_start - 1:
        field = re.match(r"^([A-Za-z0-9_-]+:)\s*(.*)$", line)
        if field:
            return wrap_words(field.group(2).split(), field.group(1) + " ", "  ")
        return wrap_words(words, indent, indent)
    if not doc.is_markdown(index):
        return wrap_words(words, indent, indent)
    for prefix in (_HEADING_PREFIX, _QUOTE_PREFIX):
        match = prefix.match(line)
        if match:
            rest = "" if prefix is _HEADING_PREFIX else match.group(0)
            return wrap_words(line[match.end() :].split(), match.group(0), rest)
    item = _LIST_PREFIX.match(line)
    if item:
        hanging = item.group(1) + " " * (len(item.group(2)) + len(item.group(3)))
        return wrap_words(line[item.end() :].split(), item.group(0), hanging)
    return wrap_words(words, indent, indent)


def fix_line_length(doc: Document) -> str:
    replace = {
        index: _wrap_line(doc, index)
        for index, line in enumerate(doc.lines)
        if len(line.rstrip("\r")) > WIDTH
    }
    return join(rebuild(doc.lines, replace, {}))


def fix_final_newline(doc: Document) -> str:
    lines = list(doc.lines)
    while lines and not lines[-1].strip():
        lines.pop()
    return join(lines) + "\n"


def _section_key(text: str) -> str:
    return rubric.Heading(0, 2, text).key


def fix_markers(doc: Document) -> str:
    kept: list[str] = []
    gaps: list[int] = []  # positions in ``kept`` where a note line was dropped
    for index, line in enumerate(doc.lines):
        if rubric.MARKER.search(line) is None:
            kept.append(line)
            continue
        cleaned = _INLINE_MARKER.sub("", line)
        heading = rubric.parse_heading(cleaned) if doc.is_markdown(index) else None
        # '## Steps TODO' would become a second '## Steps', and the first one found
        # could be the empty one: such a heading goes, its lines join the section above.
        duplicate = (
            heading is not None and heading[0] >= 2 and _section_key(heading[1]) in SECTION_NAMES
        )
        if rubric.is_placeholder(line) or duplicate:
            gaps.append(len(kept))  # a line that is only a note goes
        else:
            kept.append(cleaned)
    # Dropping a line between two blank lines would leave a double blank line: drop one
    # of the blanks too.
    for gap in reversed(gaps):
        if 0 < gap < len(kept) and not kept[gap - 1].strip() and not kept[gap].strip():
            del kept[gap - 1]
    text = join(kept)
    if rubric.check_final_newline(doc)[0]:  # the last line of text may have been a note
        text = fix_final_newline(parse(text))
    return text


fix_when_to_use = _prose_section_fix(rubric.WHEN_TO_USE, "When to use", WHEN_TO_USE_TEXT)
fix_limitations = _prose_section_fix(rubric.LIMITATIONS, "Limitations", LIMITATIONS_TEXT)


FIXES: dict[str, Callable[[Document], str]] = {
    "front-matter": fix_front_matter,
    "title": fix_title,
    "when-to-use": fix_when_to_use,
    "steps": fix_steps,
    "examples": fix_examples,
    "limitations": fix_limitations,
    "no-trailing-whitespace": fix_trailing_whitespace,
    "no-tabs": fix_tabs,
    "line-length": fix_line_length,
    "final-newline": fix_final_newline,
    "no-todo": fix_markers,
}


class CannotImprove(Exception):
    pass


def improve(text: str) -> tuple[str, str | None]:
    """The text with its first failing check repaired, and that check's id.

    A fix that would leave its check failing or break a check that passed is not used;
    the next failing check is tried instead.  ``(text, None)`` when all checks pass.
    """
    before = rubric.evaluate(text)
    passing = {result.id for result in before if result.passed}
    failing = [result.id for result in before if not result.passed]
    if not failing:
        return text, None
    doc = parse(text)
    for check_id in failing:
        candidate = FIXES[check_id](doc)
        after = {result.id for result in rubric.evaluate(candidate) if result.passed}
        if check_id in after and passing <= after:
            return candidate, check_id
    raise CannotImprove(
        "no safe fix for the failing check(s): "
        + ", ".join(f"{result.id} ({result.detail})" for result in before if not result.passed)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Repair the first failing rubric check.")
    parser.add_argument("--task-dir", required=True, help="the task folder")
    parser.add_argument("--artifact", required=True, help="the SKILL.md, relative to it")
    args = parser.parse_args(argv)
    try:
        path = rubric.resolve_artifact(args.task_dir, args.artifact)
        text = rubric.read_artifact(path)
        improved, check_id = improve(text)
    except (ValueError, OSError, CannotImprove) as error:
        print(f"mutate_skill_task: {error}", file=sys.stderr)
        return 1
    if check_id is None:
        print(f"all {len(rubric.RUBRIC)} checks pass; {args.artifact} left unchanged")
        return 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(improved)
    print(f"fixed {check_id}: {rubric.CHECKS_BY_ID[check_id].description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
