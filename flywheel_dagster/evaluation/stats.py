"""pass@1 from k samples, and paired bootstrap confidence intervals of candidate minus champion."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SuiteComparison:
    suite: str
    problems: int
    champion: float
    champion_ci: tuple[float, float]
    candidate: float
    candidate_ci: tuple[float, float]
    delta: float
    delta_ci: tuple[float, float]

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    champion: np.ndarray, candidate: np.ndarray, strata: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap distributions of the champion mean, candidate mean and their difference.

    Inputs are per-problem pass@1 estimates (mean over k samples), aligned by problem. Problems are
    resampled with replacement within each stratum (suite), the same draw for both models, so the
    difference's interval reflects the pairing.
    """
    if champion.shape != candidate.shape or champion.shape != strata.shape:
        raise ValueError(f"paired_bootstrap: shapes differ: {champion.shape}, {candidate.shape}, {strata.shape}")
    if champion.size == 0:
        raise ValueError("paired_bootstrap: no problems to compare")
    rng = np.random.default_rng(seed)
    idx_parts = []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        idx_parts.append(members[rng.integers(0, members.size, size=(resamples, members.size))])
    idx = np.concatenate(idx_parts, axis=1)
    champ = champion[idx].mean(axis=1)
    cand = candidate[idx].mean(axis=1)
    return champ, cand, cand - champ


def _ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def compare(
    champion: np.ndarray, candidate: np.ndarray, suites: np.ndarray, resamples: int, seed: int
) -> list[SuiteComparison]:
    """Per-suite comparisons plus an 'overall' row (problems pooled, suites as strata)."""
    out = []
    for name in [*sorted(np.unique(suites).tolist()), "overall"]:
        mask = np.ones_like(suites, dtype=bool) if name == "overall" else suites == name
        a, b, d = paired_bootstrap(champion[mask], candidate[mask], suites[mask], resamples, seed)
        out.append(
            SuiteComparison(
                suite=name,
                problems=int(mask.sum()),
                champion=float(champion[mask].mean()),
                champion_ci=_ci(a),
                candidate=float(candidate[mask].mean()),
                candidate_ci=_ci(b),
                delta=float(candidate[mask].mean() - champion[mask].mean()),
                delta_ci=_ci(d),
            )
        )
    return out
