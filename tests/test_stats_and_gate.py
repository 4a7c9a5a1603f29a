import numpy as np

from flywheel_dagster.config import GateConfig
from flywheel_dagster.evaluation.gate import decide_promotion
from flywheel_dagster.evaluation.stats import SuiteComparison, compare, paired_bootstrap


def test_paired_bootstrap_identical_models_have_zero_delta():
    x = np.random.default_rng(0).random(200)
    _, _, d = paired_bootstrap(x, x, np.zeros(200), 500, 0)
    assert np.all(d == 0)


def test_ci_covers_a_known_improvement():
    rng = np.random.default_rng(0)
    champ = (rng.random(400) < 0.5).astype(float)
    cand = np.where(rng.random(400) < 0.2, 1.0, champ)  # flips ~20% of problems to correct
    suites = np.array(["a", "b"] * 200)
    rows = {c.suite: c for c in compare(champ, cand, suites, 2000, 0)}
    o = rows["overall"]
    assert o.delta == cand.mean() - champ.mean()
    assert 0 < o.delta_ci[0] < o.delta < o.delta_ci[1]
    assert rows["a"].problems == 200 and o.problems == 400
    assert o.champion_ci[0] < o.champion < o.champion_ci[1]


def _cmp(suite, delta, lo, hi):
    return SuiteComparison(suite, 10, 0.5, (0.4, 0.6), 0.5 + delta, (0.4, 0.6), delta, (lo, hi))


def test_gate_promotes_only_a_clear_improvement_without_regression():
    gate = GateConfig(min_improvement=0.0, max_regression=0.05)
    ok = [_cmp("a", 0.1, 0.05, 0.15), _cmp("b", 0.02, -0.01, 0.05), _cmp("overall", 0.06, 0.02, 0.1)]
    assert decide_promotion(ok, gate, ["a", "b"]).promote
    unsure = [_cmp("a", 0.1, 0.05, 0.15), _cmp("b", 0.0, -0.02, 0.02), _cmp("overall", 0.02, -0.01, 0.05)]
    d = decide_promotion(unsure, gate, ["a", "b"])
    assert not d.promote and d.sound and "CI low" in d.reason
    regress = [_cmp("a", 0.3, 0.2, 0.4), _cmp("b", -0.1, -0.15, -0.05), _cmp("overall", 0.1, 0.05, 0.15)]
    d = decide_promotion(regress, gate, ["a", "b"])
    assert not d.promote and "'b' drops" in d.reason


def test_a_tie_is_not_promoted():
    tie = [_cmp("a", 0.0, 0.0, 0.0), _cmp("overall", 0.0, 0.0, 0.0)]  # e.g. two models that both score 0
    d = decide_promotion(tie, GateConfig(min_improvement=0.0), ["a"])
    assert not d.promote and d.sound and "not better" in d.reason


def test_gate_flags_unsound_reports():
    gate = GateConfig()
    d = decide_promotion([_cmp("a", 0.1, 0.05, 0.15), _cmp("overall", 0.1, 0.05, 0.15)], gate, ["a", "b"])
    assert not d.promote and not d.sound and "missing suites ['b']" in d.reason
    nan = [_cmp("a", float("nan"), 0, 0), _cmp("overall", 0.1, 0.05, 0.15)]
    assert not decide_promotion(nan, gate, ["a"]).sound


def test_always_promote_takes_a_worse_candidate_but_never_an_unsound_report():
    gate = GateConfig(always_promote=True)
    worse = [_cmp("a", -0.2, -0.3, -0.1), _cmp("overall", -0.2, -0.3, -0.1)]
    d = decide_promotion(worse, gate, ["a"])
    assert d.promote and d.sound and "always_promote" in d.reason and "-0.200" in d.reason
    assert not decide_promotion(worse, gate, ["a", "b"]).promote  # a missing suite still blocks
