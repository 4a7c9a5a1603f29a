"""Compute-time accounting: how long each stage spends in its core work (for benchmarks/cycle.py)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

_TOTALS: dict[str, float] = defaultdict(float)


@contextmanager
def compute(stage: str) -> Iterator[None]:
    """Count the block's wall time as compute of `stage` (the asset's step key)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _TOTALS[stage] += time.perf_counter() - started


def totals() -> dict[str, float]:
    return dict(_TOTALS)


def reset() -> None:
    _TOTALS.clear()
