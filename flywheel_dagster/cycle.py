"""One flywheel cycle, stage by stage, without Dagster: the asset functions are thin wrappers of these."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from flywheel_dagster import timing
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.engines.base import InferenceEngine, SamplingSettings
from flywheel_dagster.evaluation.benchmark import benchmark_fingerprint, compare_evaluations, evaluate
from flywheel_dagster.evaluation.gate import decide_promotion
from flywheel_dagster.evaluation.stats import SuiteComparison
from flywheel_dagster.records import (
    BENCHMARK_REPORT,
    EVALUATIONS,
    BenchmarkReport,
    GateDecision,
    ModelId,
    evaluation_prefix,
)
from flywheel_dagster.registry import BASE, ModelRef, Registry, cycle_alias
from flywheel_dagster.tasks.base import TaskSource, verifier_id
from flywheel_dagster.traces.lake import Lake
from flywheel_dagster.traces.schema import TRACE_SCHEMA, trace_id


class CycleOrderError(RuntimeError):
    """A cycle was started before the one it builds on finished."""


def resolve_deployment(
    registry: Registry,
    cycle: str,
    previous: str | None,
    finished_cycles: set[str],
    started_cycles: set[str] = frozenset(),
    rolled_back: Callable[[str], dict | None] | None = None,  # cycle -> the rollback entry made after it, or None
    first_cycle: str | None = None,
) -> tuple[ModelRef, str]:
    """The model that serves during `cycle`: what the previous cycle ended with, or the base for the first.

    Returns the model and where it came from (an alias name). `previous`: the quarter before `cycle`, None for
    the flywheel's first quarter (schedule.start_date). Cycles run in quarter order from the first: a cycle
    whose previous one has not finished is refused with the cycle to run first. `started_cycles`: cycles whose
    deployment is materialized; an earlier one that never finished (failed, or waits for approval) holds
    every later one.
    """
    unfinished = sorted(c for c in started_cycles if c < cycle and c not in finished_cycles)
    if unfinished:
        raise CycleOrderError(
            f"cycle {cycle} cannot start: cycle {unfinished[-1]} started but has not finished (its "
            "champion_model is not materialized: it failed, or its promotion waits for approval). "
            f"Finish cycle {unfinished[-1]} first."
        )
    if previous is not None:
        if previous not in finished_cycles:
            done = sorted(c for c in finished_cycles if c < cycle)
            after = f"the last finished cycle is {done[-1]}" if done else "no cycle has finished yet"
            raise CycleOrderError(
                f"cycle {cycle} cannot start: the cycle before it, {previous}, has not finished ({after}; "
                f"cycles run in quarter order from schedule.start_date). Run {_first_missing(previous, done, first_cycle)} first."
            )
        rollback = rolled_back(previous) if rolled_back else None
        if rollback is not None:  # `flywheel rollback` after the previous cycle: that version served since
            return registry.version(rollback["to_version"]), f"rollback (audit entry #{rollback['seq']})"
        ref = registry.alias(cycle_alias(previous))
        if ref is None:
            raise CycleOrderError(
                f"cycle {previous} finished but the registry has no alias {cycle_alias(previous)!r}; "
                f"rerun champion_model for {previous}"
            )
        return ref, cycle_alias(previous)
    # The flywheel's first cycle (or a rerun of it): the bootstrap base serves.
    ref = registry.alias(BASE)
    if ref is None:
        raise CycleOrderError(
            f"cycle {cycle} is the flywheel's first, but the registry has no '{BASE}' model: "
            "run `flywheel bootstrap` first"
        )
    return ref, BASE


def _first_missing(previous: str, finished_before: list[str], first_cycle: str | None) -> str:
    """The earliest quarter after the last finished one, up to `previous`: the next cycle that can run."""
    if not finished_before:
        return f"cycle {first_cycle} (the flywheel's first)" if first_cycle else "the flywheel's first cycle"
    year, month = int(finished_before[-1][:4]), int(finished_before[-1][5:7]) + 3
    nxt = f"{year + (month > 12):04d}-{(month - 1) % 12 + 1:02d}-01"
    return f"cycle {min(nxt, previous)}"


def capture_traffic(
    cfg: FlywheelConfig,
    task: TaskSource,
    engine: InferenceEngine,
    cycle: str,
    index: int,
    ref: ModelRef,
) -> pa.Table:
    """Run the quarter's simulated production traffic through the deployed model; one row per sample."""
    problems = task.traffic(index, cfg.traffic.problems_per_cycle)
    settings = SamplingSettings(
        n=cfg.traffic.samples_per_problem,
        temperature=cfg.traffic.temperature,
        top_p=cfg.traffic.top_p,
        max_new_tokens=cfg.traffic.max_new_tokens,
        seed=cfg.task.seed * 1000 + index,
    )
    completions = engine.generate([p.prompt for p in problems], settings)
    now = datetime.now(UTC)
    rows = []
    for c in completions:
        p = problems[c.prompt_index]
        parsed = task.parse(c.text)
        rows.append(
            {
                "trace_id": trace_id(cycle, ref.version, p.problem_id, p.prompt, c.sample_index),
                "cycle": cycle,
                "source": "simulated",
                "model_name": ref.name,
                "model_version": ref.version,
                "problem_id": p.problem_id,
                "suite": p.suite,
                "prompt": p.prompt,
                "completion": c.text,
                "reasoning": parsed.reasoning,
                "answer": parsed.answer,
                "reference_answer": p.reference,
                "correct": None,
                "verifier": None,
                "verdict": None,
                "tokens": c.tokens,
                "mean_logprob": c.mean_logprob,
                "finish_reason": c.finish_reason,
                "sample_index": c.sample_index,
                "created_at": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)


def benchmark_settings(cfg: FlywheelConfig) -> SamplingSettings:
    return SamplingSettings(
        n=cfg.benchmark.samples_per_problem,
        temperature=cfg.benchmark.temperature,
        max_new_tokens=cfg.benchmark.max_new_tokens,
        seed=cfg.benchmark.seed,
    )


@dataclass(frozen=True)
class ModelEvaluation:
    table: pa.Table
    cached: bool
    seconds: float


def evaluation_key(ref: ModelRef, problems: list, settings: SamplingSettings, verifier: str, engine: str) -> str:
    """The lake partition (EVALUATIONS) of a version's results on this benchmark, sampled with `settings` by the
    engine `engine` (EngineResource.identity) and judged by `verifier` (tasks.base.verifier_id):
    evaluation_benchmark_prefix, then a fingerprint of the verifier and the engine."""
    judged_by = hashlib.sha256(json.dumps([verifier, engine]).encode()).hexdigest()[:8]
    return evaluation_benchmark_prefix(ref, problems, settings) + judged_by


def evaluation_benchmark_prefix(ref: ModelRef, problems: list, settings: SamplingSettings) -> str:
    """What the evaluations of one version on this benchmark (problems, sampling settings) are named by, whatever
    engine or verifier made them."""
    return evaluation_prefix(ref.name, ref.version, ref.run_id) + benchmark_fingerprint(problems, settings) + "-"


def evaluate_version(
    cfg: FlywheelConfig,
    task: TaskSource,
    lake: Lake,
    registry: Registry,
    ref: ModelRef,
    load_engine: Callable[[Path], InferenceEngine],
    engine_id: str,
) -> ModelEvaluation:
    """A model version's results on the fixed benchmark, computed once and kept in the lake.

    The champion of cycle N was the candidate of cycle N-1, on the same benchmark with the same seed, so
    its results are read back rather than generated again - when the same engine (kind, package version,
    device: `engine_id`) and the same verifier made them; after an upgrade of either, both versions of a
    comparison are evaluated by the new one.
    """
    problems = task.benchmark(cfg.benchmark.problems_per_suite, cfg.benchmark.seed)
    settings = benchmark_settings(cfg)
    key = evaluation_key(ref, problems, settings, verifier_id(task), engine_id)
    if lake.exists(EVALUATIONS, key):
        return ModelEvaluation(lake.read_table(EVALUATIONS, key), True, 0.0)
    started = time.perf_counter()
    engine = load_engine(registry.local_path(ref))
    try:
        with timing.compute(BENCHMARK_REPORT):
            table = evaluate(engine, task, problems, settings)
    finally:
        engine.close()
    lake.write_table(EVALUATIONS, key, table)
    return ModelEvaluation(table, False, time.perf_counter() - started)


def compare_and_decide(
    cfg: FlywheelConfig, task: TaskSource, champion: pa.Table, candidate: pa.Table
) -> tuple[list[SuiteComparison], GateDecision]:
    comparisons = compare_evaluations(champion, candidate, cfg.benchmark.bootstrap_resamples, seed=cfg.benchmark.seed)
    return comparisons, decide_promotion(comparisons, cfg.gate, task.suites())


def benchmark_report(
    cycle: str,
    index: int,
    champion: ModelRef,
    candidate: ModelRef,
    comparisons: list[SuiteComparison],
    decision: GateDecision,
) -> BenchmarkReport:
    return BenchmarkReport(
        cycle=cycle,
        cycle_index=index,
        champion=ModelId(champion.name, champion.version),
        candidate=ModelId(candidate.name, candidate.version),
        suites=[c.as_dict() for c in comparisons],
        gate=decision,
    )
