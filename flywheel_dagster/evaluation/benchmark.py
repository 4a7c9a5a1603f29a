"""Run a model on the fixed held-out benchmark: k samples per problem, pass@1 per problem."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from flywheel_dagster.engines.base import InferenceEngine, SamplingSettings
from flywheel_dagster.evaluation.stats import SuiteComparison, compare
from flywheel_dagster.tasks.base import Problem, TaskSource

EVAL_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("suite", pa.string(), nullable=False),
        pa.field("samples", pa.int32(), nullable=False),
        pa.field("correct", pa.int32(), nullable=False),
        pa.field("pass_at_1", pa.float64(), nullable=False),
        pa.field("tokens", pa.int64(), nullable=False),
    ]
)


def benchmark_fingerprint(problems: list[Problem], settings: SamplingSettings, verifier: str | None = None) -> str:
    """Identifies a benchmark: same problems and sampling settings give the same fingerprint (the engine and
    the verifier are named apart: cycle.evaluation_key). With `verifier`, the fingerprint evaluations were named
    by until 2026-12-05, which held the verifier's name."""
    fields = {"problems": [(p.problem_id, p.prompt, p.reference) for p in problems], "settings": settings.__dict__}
    payload = json.dumps(fields if verifier is None else fields | {"verifier": verifier}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def evaluate(
    engine: InferenceEngine, task: TaskSource, problems: list[Problem], settings: SamplingSettings
) -> pa.Table:
    """One row per problem: how many of k samples the verifier accepted (pass@1 = correct / k)."""
    completions = engine.generate([p.prompt for p in problems], settings)
    correct = np.zeros(len(problems), dtype=np.int32)
    tokens = np.zeros(len(problems), dtype=np.int64)
    for c in completions:
        p = problems[c.prompt_index]
        correct[c.prompt_index] += task.verify(c.text, p.reference).correct
        tokens[c.prompt_index] += c.tokens
    return pa.table(
        {
            "problem_id": [p.problem_id for p in problems],
            "suite": [p.suite for p in problems],
            "samples": np.full(len(problems), settings.n, dtype=np.int32),
            "correct": correct,
            "pass_at_1": correct / settings.n,
            "tokens": tokens,
        },
        schema=EVAL_SCHEMA,
    )


def compare_evaluations(champion: pa.Table, candidate: pa.Table, resamples: int, seed: int) -> list[SuiteComparison]:
    """Align two evaluations by problem and compare them with paired bootstrap CIs."""
    a = champion.sort_by("problem_id")
    b = candidate.sort_by("problem_id")
    if a.column("problem_id").to_pylist() != b.column("problem_id").to_pylist():
        raise ValueError("compare_evaluations: the two evaluations are not on the same benchmark problems")
    return compare(
        a.column("pass_at_1").to_numpy(),
        b.column("pass_at_1").to_numpy(),
        np.array(a.column("suite").to_pylist()),
        resamples,
        seed,
    )
