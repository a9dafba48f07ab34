#!/usr/bin/env python3
"""The seed's entry point: ``python scripts/run_task.py --task PATH`` is ``loopengine run``."""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loopengine.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]], prog_name="run_task.py")
