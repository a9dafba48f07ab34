"""The README a newcomer reads first, and the guide an agent reads."""

from __future__ import annotations

import re

from cli_support import invoke
from conftest import PROJECT

README = (PROJECT / "README.md").read_text(encoding="utf-8")


def sections() -> list[str]:
    return re.findall(r"^## (.+)$", README, re.M)


def test_the_readme_starts_with_what_install_the_two_commands_and_own_repository() -> None:
    assert sections()[:4] == ["Install", "The two commands", "Use it on your own repository",
                              "What to expect"]
    intro = README.split("## Install")[0]
    assert "loopengine runs *one* try in a throwaway sandbox" in intro
    install = README.split("## Install")[1].split("## ")[0]
    assert "uv add loopengine" in install and "git+" in install
    assert "uv tool install" in install
    two = README.split("## The two commands")[1].split("## ")[0]
    assert "uv run loopengine run --task tasks/skill-quality/task.yaml" in two
    assert "uv run pytest" in two
    own = README.split("## Use it on your own repository")[1].split("## ")[0]
    block = own.split("```bash\n")[1].split("```")[0].strip().splitlines()
    assert len(block) <= 10
    assert any("loopengine init" in line for line in block)
    assert any("loopengine run --task" in line for line in block)
    assert len(README.splitlines()) < 150  # the reference lives in docs/


def test_the_readme_links_every_reference_page_and_each_exists() -> None:
    links = re.findall(r"\]\(([^)#]+\.md)\)", README)
    for name in ("task-file", "records", "commands", "verdicts", "safety", "performance",
                 "decisions", "isolation", "campaigns", "cluster", "views"):
        assert f"docs/{name}.md" in links, name
    assert "loopengine/guide.md" in links
    missing = [link for link in links if not (PROJECT / link).is_file()]
    # Pages other engineers of this round are still writing (checked again at the end).
    assert set(missing) <= {"docs/isolation.md", "docs/campaigns.md", "docs/cluster.md"}


def test_the_guide_covers_verdicts_the_first_baseline_and_run_id_shortcuts() -> None:
    guide = invoke("guide").stdout
    for words in ("policy.repeats", "loopengine calibrate", "loopengine verify",
                  "`inconclusive:`", "baseline_source: remeasured",
                  "never kept against nothing", "loopengine show last",
                  "prefix\n  or suffix of a run id", "--patch -", "patch_conflict",
                  "--candidates N", "loopengine loop", "loopengine status",
                  "loopengine report", "loopengine mcp", "baseline_metrics"):
        assert words in guide, words
