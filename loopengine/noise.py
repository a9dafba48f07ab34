"""The evaluation's noise, pooled per fingerprint: ``work/baselines/noise/<task_id>.json``.

The noise is a property of the evaluation, not of one candidate, so every group of runs
measured under one evaluation fingerprint -- each candidate's runs, each retired
baseline's -- adds its squared deviations from its own mean and its degrees of freedom
(see :class:`loopengine.stats.Pool`).  The current baseline's runs are not in the file:
they live in the baseline store and join the pool when a keep retires them.

A small JSON file a task, next to the baseline store, written atomically under its own
lock.  It only ever sharpens an estimate, so a damaged or missing file reads as empty
(the test then estimates the noise from the runs at hand and is as safe, only slower)
and the next write replaces it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loopengine.results import WORK_DIR, iso_utc, locked, write_atomic
from loopengine.stats import Pool

# Fingerprints change with every edit of the evaluation; the file keeps the newest few.
KEEP_FINGERPRINTS = 20
_LOCK = ".noise.lock"


def noise_path(root: Path, task_id: str) -> Path:
    return root / WORK_DIR / "baselines" / "noise" / f"{task_id}.json"


def load(root: Path, task_id: str, fingerprint: str | None) -> Pool:
    """The pooled noise of earlier runs under ``fingerprint``; empty when none is known."""
    if fingerprint is None:
        return Pool()
    entry = _read(noise_path(root, task_id)).get(fingerprint)
    return _pool(entry) or Pool()


def add(root: Path, task_id: str, fingerprint: str | None, groups: Iterable[list[float]]) -> None:
    """Pool each group of two or more runs into ``fingerprint``'s noise."""
    if fingerprint is None:
        return
    extra = Pool()
    for group in groups:
        extra = extra + Pool.of(group)
    if extra.df == 0 or not math.isfinite(extra.ss):
        return
    path = noise_path(root, task_id)
    with locked(root, _LOCK):
        pools = _read(path)
        old = _pool(pools.get(fingerprint)) or Pool()
        new = old + extra
        pools[fingerprint] = {"ss": new.ss, "df": new.df,
                              "updated": iso_utc(dt.datetime.now(dt.UTC))}
        newest = sorted(pools, key=lambda fp: str(pools[fp].get("updated", "")))
        for stale in newest[:-KEEP_FINGERPRINTS]:
            del pools[stale]
        data = {"version": 1, "pools": pools}
        write_atomic(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_bytes())
        pools = data["pools"]
        if isinstance(pools, dict):
            return {str(k): v for k, v in pools.items() if isinstance(v, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def _pool(entry: Any) -> Pool | None:
    if not isinstance(entry, dict):
        return None
    ss, df = entry.get("ss"), entry.get("df")
    numeric = isinstance(ss, int | float) and not isinstance(ss, bool)
    if not numeric or not isinstance(df, int) or isinstance(df, bool):
        return None
    if df < 0 or ss < 0 or not math.isfinite(ss):
        return None
    return Pool(float(ss), df)

