"""``loopengine guide``: the guide for AI agents, kept as ``loopengine/guide.md``."""

from __future__ import annotations

from importlib import resources

import click


def guide_text() -> str:
    return resources.files("loopengine").joinpath("guide.md").read_text(encoding="utf-8")


def guide() -> None:
    click.echo(guide_text(), nl=False)
