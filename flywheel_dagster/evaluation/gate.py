"""The promotion gate: promote a candidate only if it is better overall and regresses on no suite."""

from __future__ import annotations

import math

from flywheel_dagster.config import GateConfig
from flywheel_dagster.evaluation.stats import SuiteComparison
from flywheel_dagster.records import GateDecision

__all__ = ["GateDecision", "decide_promotion"]


def decide_promotion(comparisons: list[SuiteComparison], gate: GateConfig, expected_suites: list[str]) -> GateDecision:
    by_suite = {c.suite: c for c in comparisons}
    missing = sorted(set(expected_suites) - set(by_suite))
    if missing or "overall" not in by_suite:
        return GateDecision(False, False, f"benchmark report is incomplete: missing suites {missing or ['overall']}")
    for c in comparisons:
        values = (c.champion, c.candidate, c.delta, *c.delta_ci)
        if not all(math.isfinite(v) for v in values):
            return GateDecision(False, False, f"benchmark report has non-finite figures for suite {c.suite!r}")
    overall = by_suite["overall"]
    low = overall.delta_ci[0]
    if gate.always_promote:
        return GateDecision(
            True,
            True,
            f"gate.always_promote: promoted whatever its delta ({overall.delta:+.3f}, 95% CI {low:+.3f}.."
            f"{overall.delta_ci[1]:+.3f})",
        )
    if overall.delta <= 0:
        return GateDecision(
            False, True, f"overall delta {overall.delta:+.3f}: the candidate is not better than the champion"
        )
    if low < gate.min_improvement:
        return GateDecision(
            False,
            True,
            f"overall delta {overall.delta:+.3f} has 95% CI low {low:+.3f} < min_improvement {gate.min_improvement:+.3f}",
        )
    regressions = [c for c in comparisons if c.suite != "overall" and c.delta < -gate.max_regression]
    if regressions:
        worst = min(regressions, key=lambda c: c.delta)
        return GateDecision(
            False,
            True,
            f"suite {worst.suite!r} drops {worst.delta:+.3f}, beyond max_regression {gate.max_regression:.3f}",
        )
    return GateDecision(
        True,
        True,
        f"overall delta {overall.delta:+.3f} (95% CI {low:+.3f}..{overall.delta_ci[1]:+.3f}), no suite regressed",
    )
