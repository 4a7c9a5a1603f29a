"""An estimate with its confidence interval as text, the one way the CLI, the overview and the reports write it."""

from __future__ import annotations

from collections.abc import Sequence


def with_ci(value: float, ci: Sequence[float], *, signed: bool = False, dots: bool = False) -> str:
    """`0.412 [0.380, 0.445]`; signed (a delta): `+0.031 [-0.002, +0.064]`; dots: `+0.031 (-0.002..+0.064)`."""
    spec = "+.3f" if signed else ".3f"
    lo, hi = ci
    interval = f"({lo:{spec}}..{hi:{spec}})" if dots else f"[{lo:{spec}}, {hi:{spec}}]"
    return f"{value:{spec}} {interval}"
