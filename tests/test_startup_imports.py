"""The CLI starts fast: `run`, `validate` and `status` never import the heavy libraries.

matplotlib and mcp serve `report` and `mcp` only; ray serves the ray executor only; rich
draws for a terminal only.  Read with ``python -X importtime``, on real commands whose
stdout is a pipe (as an agent calls them).
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import PY, Repo

HEAVY = ("matplotlib", "mcp", "rich", "ray", "numpy", "PIL", "anyio", "starlette")


def imported(repo: Repo, *args: str) -> dict[str, int]:
    """``top-level package -> cumulative microseconds`` that ``loopengine ARGS`` imported."""
    proc = subprocess.run([PY, "-X", "importtime", "-m", "loopengine", *args], cwd=repo.path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    found: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        if cumulative.isdigit():
            top = name.split(".")[0]
            found[top] = max(found.get(top, 0), int(cumulative))
    return found


@pytest.mark.parametrize("args", [
    ("run", "--task", "tasks/demo/task.yaml"),
    ("validate", "--task", "tasks/demo/task.yaml"),
    ("status",),
    ("status", "--json"),
])
def test_no_heavy_import(repo: Repo, args: tuple[str, ...]) -> None:
    if args[0] == "status":
        repo.run()  # something to show: a record, a baseline
    found = imported(repo, *args)
    assert "loopengine" in found
    heavy = {name: found[name] for name in HEAVY if name in found}
    assert heavy == {}, f"loopengine {' '.join(args)} imported {heavy}"


def test_the_views_import_their_libraries(repo: Repo) -> None:
    """The counter-check: the same reading sees matplotlib when `report` needs it."""
    assert "matplotlib" in imported(repo, "report")
