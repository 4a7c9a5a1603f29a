"""A cycle's audit record, built from plain inputs: the lake's stage records, the registry, and what the
orchestrator says about each stage's materialization and each check (passed in by the cycle_audit asset,
which holds the one Dagster-specific query)."""

from __future__ import annotations

from typing import Any

from flywheel_dagster import audit
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.records import (
    BENCHMARK_REPORT,
    EVALUATIONS,
    ApprovalRecord,
    BenchmarkReport,
    Candidate,
    Decision,
    Deployment,
    TraceSet,
    evaluation_prefix,
    stale_report,
)
from flywheel_dagster.registry import Registry
from flywheel_dagster.traces.lake import Lake


def _model(registry: Registry, version: str, weights: str | None, run_id: str | None) -> dict[str, Any]:
    ref = registry.version(version)
    return {
        "name": registry.model_name,
        "version": version,
        "run_id": run_id,
        "weights_sha256": weights,
        "files_sha256": registry.files_sha256(ref),
        "adapter": registry.is_adapter(ref),
    }


class StaleCycle(RuntimeError):
    """The cycle's records describe different models: a step ran again after the steps that read it."""


def cycle_record(
    cfg: FlywheelConfig,
    lake: Lake,
    registry: Registry,
    cycle: str,
    index: int,
    assets: dict[str, dict[str, Any]],
    checks: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The `kind: cycle` entry of the audit chain for `cycle` (before the chain places it).

    `assets`: per stage asset, its materialization (run_id, code_version, data_version, materialized_at,
    mlflow_run_id, counts); `checks`: per check, its latest result for the cycle.
    """
    deployed = Deployment.read(lake, cycle)
    candidate = Candidate.read(lake, cycle)
    report = BenchmarkReport.read(lake, cycle)
    decision = Decision.read(lake, cycle).to_json()
    stale = stale_report(report, deployed.version, candidate.version)
    if stale is None and decision["candidate"] != report.candidate.version:
        stale = (
            f"cycle {cycle}: champion_model decided on candidate v{decision['candidate']}, but benchmark_report "
            f"compared v{report.candidate.version} (it ran again after the decision); materialize champion_model again"
        )
    if stale:  # the record would pair one model's decision with another's training data
        raise StaleCycle(stale)
    params = registry.run_params(candidate.run_id)
    prefixes = tuple(
        evaluation_prefix(registry.model_name, ref.version, ref.run_id)
        for ref in (registry.version(deployed.version), registry.version(candidate.version))
    )
    evaluations = [p for p in lake.cycles(EVALUATIONS) if p.startswith(prefixes)]
    approval = ApprovalRecord.find(lake, cycle)
    return {
        "kind": "cycle",
        "flywheel": cfg.name,
        "cycle": cycle,
        "cycle_index": index,
        "assets": assets,
        "files": audit.lake_files(lake, cycle, evaluations),
        "inputs": TraceSet.sources(lake, cycle),  # the raw log files ingested (None: simulated traffic)
        "checks": checks,
        "training": {
            "method": candidate.method,
            "mlflow_run_id": candidate.run_id,
            "job_id": candidate.job_id,
            "config": {k.removeprefix("training."): v for k, v in sorted(params.items()) if k.startswith("training.")},
            "training_dataset_sha256": params.get("training_dataset_sha256"),
            **candidate.training_figures(),
        },
        "models": {
            "deployed": _model(registry, deployed.version, deployed.weights_sha256, deployed.run_id),
            "candidate": _model(registry, candidate.version, candidate.weights_sha256, candidate.run_id),
        },
        "benchmark": {
            "problems_per_suite": cfg.benchmark.problems_per_suite,
            "samples_per_problem": cfg.benchmark.samples_per_problem,
            "suites": report.suites,
            "mlflow_run_id": assets[BENCHMARK_REPORT]["mlflow_run_id"],
        },
        "gate": report.to_json()["gate"],
        "decision": {k: decision[k] for k in ("decision", "reason", "previous_champion", "candidate", "champion")},
        "approval": {"required": cfg.gate.require_approval, "record": approval.to_json() if approval else None},
    }
