"""``loopengine guide`` and the command-line surface as a whole."""

from __future__ import annotations

import re
from importlib import resources

import click
import pytest
from cli_support import invoke
from conftest import PROJECT

from loopengine.cli import main

CRASH_KINDS = ["config", "sandbox", "mutator", "runner", "scorer", "timeout", "budget",
               "interrupted", "internal"]
COMMANDS = ["run", "validate", "show", "history", "results", "init", "schema", "guide"]


def test_guide_prints_the_packaged_markdown() -> None:
    text = resources.files("loopengine").joinpath("guide.md").read_text(encoding="utf-8")
    result = invoke("guide")
    assert result.exit_code == 0
    assert result.stdout == text
    assert text.startswith("# ")


def test_the_guide_covers_every_status_crash_kind_and_rule() -> None:
    text = invoke("guide").stdout
    for word in ["`keep`", "`discard`", "`crash`", "--patch", "loopengine init",
                 "loopengine show", "log_tail", "violations"]:
        assert word in text, word
    for kind in CRASH_KINDS:
        assert f"`{kind}`" in text, kind
    readme = (PROJECT / "docs/decisions.md").read_text()
    rules = re.search(r"\*\*Violation rule names\*\*: (.*?)\.\n", readme, re.S)
    assert rules is not None
    for rule in re.findall(r"`([a-z_.]+)`", rules.group(1)):
        assert f"`{rule}`" in text, rule


def test_readme_links_the_guide() -> None:
    readme = (PROJECT / "README.md").read_text() + (PROJECT / "docs/commands.md").read_text()
    assert "(loopengine/guide.md)" in readme or "(../loopengine/guide.md)" in readme
    assert (PROJECT / "loopengine/guide.md").is_file()


def test_every_contract_command_exists_and_every_option_has_help() -> None:
    assert set(COMMANDS) <= set(main.commands)
    for name, command in main.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"


@pytest.mark.parametrize("name", ["run", "validate", "show", "history", "results", "init"])
def test_commands_on_a_repository_take_repo(name: str) -> None:
    options = {opt for p in main.commands[name].params for opt in getattr(p, "opts", [])}
    assert "--repo" in options


def test_repo_must_be_an_existing_folder(tmp_path) -> None:
    result = invoke("results", "--repo", str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
