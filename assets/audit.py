"""Audit: one record per cycle of which data, code and decisions produced the model, in a hash chain.

The record is built from what Dagster, the lake and MLflow hold after the cycle: every stage asset's
materialization (run, code version, data version, time), every file of the cycle's partitions with its
sha256, the checks' results, the training run, the models' hashes, the benchmark and the decision.
"""

import json
from datetime import UTC, datetime

import dagster as dg

from assets import PARTITIONS, cycle_of, dagster_tags, mlflow_run_links
from assets import harvest as harvest_assets
from assets import redeploy as redeploy_assets
from assets.redeploy import champion_model
from flywheel_dagster import audit
from flywheel_dagster import cycle as core
from flywheel_dagster.approval import read_approval
from flywheel_dagster.overview import cycle_row, overview_markdown
from flywheel_dagster.resources import FlywheelConfigResource, LakeResource, MlflowResource

STAGE_ASSETS = (
    "deployment",
    "reasoning_traces",
    "harvested_traces",
    "training_dataset",
    "candidate_model",
    "benchmark_report",
    "champion_model",
)
CHECK_KEYS = [
    key
    for checks in (
        *harvest_assets.harvest_monitor_checks,
        harvest_assets.no_pii,
        harvest_assets.no_benchmark_overlap,
        redeploy_assets.promotion_gate,
        redeploy_assets.human_approval,
    )
    for key in checks.check_keys
]


def _materializations(instance: dg.DagsterInstance, key: str) -> dict[str, dict]:
    out = {}
    for name in STAGE_ASSETS:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[key]), limit=1
        ).records
        if not records:
            raise dg.Failure(f"cannot audit cycle {key}: {name} has no materialization for it")
        rec = records[0]
        mat = rec.asset_materialization
        counts = {
            k: v.value
            for k, v in sorted(mat.metadata.items())
            if isinstance(v.value, int) and not isinstance(v.value, bool)
        }
        out[name] = {
            "run_id": rec.run_id,
            "code_version": mat.tags.get("dagster/code_version"),
            "data_version": mat.tags.get("dagster/data_version"),
            "materialized_at": datetime.fromtimestamp(rec.timestamp, UTC).isoformat(),
            "mlflow_run_id": mat.metadata["mlflow_run_id"].value if "mlflow_run_id" in mat.metadata else None,
            "counts": counts,
        }
    return out


def _checks(instance: dg.DagsterInstance, key: str) -> dict[str, dict]:
    from dagster._core.event_api import PartitionKeyFilter

    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        CHECK_KEYS, partition_filter=PartitionKeyFilter(key=key)
    )
    out = {}
    for check_key, rec in sorted(latest.items(), key=lambda kv: kv[0].name):
        ev = rec.evaluation
        if ev is None:  # planned, never evaluated (skipped)
            out[check_key.name] = {"asset": check_key.asset_key.path[-1], "status": rec.status.value}
            continue
        out[check_key.name] = {
            "asset": check_key.asset_key.path[-1],
            "passed": ev.passed,
            "severity": ev.severity.value,
            "description": ev.description,
            "run_id": rec.run_id,
        }
    return out


def build_record(instance: dg.DagsterInstance, cfg, the_lake, registry, key: str, index: int) -> dict:  # noqa: ANN001
    deployed = core.read_json(the_lake, "deployment", key, core.DEPLOYMENT_FILE)
    candidate = core.read_json(the_lake, "candidate_model", key, core.CANDIDATE_FILE)
    report = core.read_json(the_lake, "benchmark_report", key, core.REPORT_FILE)
    decision = core.read_json(the_lake, "champion_model", key, core.DECISION_FILE)
    params = registry.client.get_run(candidate["run_id"]).data.params
    evaluations = [
        p
        for p in the_lake.cycles(core.EVALUATIONS_TABLE)
        for v in (deployed["version"], candidate["version"])
        if p.startswith(f"{registry.model_name}-v{v}-")
    ]

    def model(version: str, weights: str | None, run_id: str | None) -> dict:
        ref = registry.version(version)
        return {
            "name": registry.model_name,
            "version": version,
            "run_id": run_id,
            "weights_sha256": weights,
            "files_sha256": registry.files_sha256(ref),
            "adapter": registry.is_adapter(ref),
        }

    assets = _materializations(instance, key)
    sources = (
        json.loads(the_lake.read_bytes("reasoning_traces", key, audit.SOURCES_FILE))
        if the_lake.exists("reasoning_traces", key, audit.SOURCES_FILE)
        else None
    )
    return {
        "kind": "cycle",
        "flywheel": cfg.name,
        "cycle": key,
        "cycle_index": index,
        "assets": assets,
        "files": audit.lake_files(the_lake, key, evaluations),
        "inputs": sources,  # the raw log files ingested (None: simulated traffic)
        "checks": _checks(instance, key),
        "training": {
            "method": candidate["method"],
            "mlflow_run_id": candidate["run_id"],
            "job_id": candidate["job_id"],
            "config": {k.removeprefix("training."): v for k, v in sorted(params.items()) if k.startswith("training.")},
            "training_dataset_sha256": params.get("training_dataset_sha256"),
            **{k: candidate[k] for k in ("steps", "train_loss", "eval_loss", "tokens_trained", "tokens_generated")},
        },
        "models": {
            "deployed": model(deployed["version"], deployed["weights_sha256"], deployed["run_id"]),
            "candidate": model(candidate["version"], candidate["weights_sha256"], candidate["run_id"]),
        },
        "benchmark": {
            "problems_per_suite": cfg.benchmark.problems_per_suite,
            "samples_per_problem": cfg.benchmark.samples_per_problem,
            "suites": report["suites"],
            "mlflow_run_id": assets["benchmark_report"]["mlflow_run_id"],
        },
        "gate": report["gate"],
        "decision": {k: decision[k] for k in ("decision", "reason", "previous_champion", "candidate", "champion")},
        "approval": {"required": cfg.gate.require_approval, "record": read_approval(the_lake, key)},
    }


@dg.asset(partitions_def=PARTITIONS, group_name="audit", code_version="2", deps=[champion_model])
def cycle_audit(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The cycle's audit record (JSON, in the hash chain) and its HTML report: which data, code and decisions
    produced this quarter's champion. `flywheel audit verify` re-checks every hash in it."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context)
    the_lake = lake.lake()
    registry = mlflow.registry(cfg.name)
    chain = audit.Chain(the_lake)
    audit.ensure_genesis(the_lake, registry)
    record = build_record(context.instance, cfg, the_lake, registry, key, index)
    previous = chain.latest_cycle_records().get(key)
    if previous is not None and audit.content(previous[0]) == record:
        stored, sha, appended = previous[0], previous[1], False
    else:
        stored, sha = audit.append_and_anchor(chain, registry, {**record, "amends": previous[1] if previous else None})
        appended = True
    files = the_lake.write_partition(
        audit.AUDIT_TABLE,
        key,
        {audit.RECORD_FILE: audit.canonical(stored), audit.REPORT_FILE: audit.render_html(stored, sha).encode()},
    )
    audit_tags = {audit.RECORD_TAG: sha, "flywheel.audit_seq": str(stored["seq"])}
    registry.set_tags(registry.cycle_run(key, index), audit_tags)
    # The report as an artifact of the cycle's audit run: the MLflow UI serves it over HTTP and renders it.
    with registry.stage(key, index, "audit", {**dagster_tags(context, cfg), **audit_tags}) as run_id:
        registry.client.log_artifact(run_id, the_lake.partition_dir(audit.AUDIT_TABLE, key) + "/" + audit.REPORT_FILE)
    rows = [cycle_row(rec) for _, (rec, _) in sorted(chain.latest_cycle_records().items())]
    failed = [n for n, c in record["checks"].items() if c.get("passed") is False]
    approval = record["approval"]["record"]
    approved = f"{approval['verdict']} by {approval['by']}" if approval else audit.approval_line(record)
    return dg.MaterializeResult(
        metadata={
            "record_sha256": sha,
            "chain_seq": stored["seq"],
            "previous_sha256": stored["previous_sha256"] or "",
            "amends": stored.get("amends") or "",
            "appended": appended,
            "files": len(record["files"]),
            "checks_failed": ", ".join(failed) or "none",
            "decision": record["decision"]["decision"],
            "approval": approved,
            "summary": next(r.line() for r in rows if r.cycle == key),
            "report": dg.MetadataValue.url(registry.artifact_url(cfg.ui.mlflow_url, run_id, audit.REPORT_FILE)),
            "report_uri": dg.MetadataValue.path(files[audit.REPORT_FILE].uri),
            **mlflow_run_links(cfg, registry, run_id),
            "cycles": dg.MetadataValue.md(overview_markdown(rows)),
            "record": dg.MetadataValue.json(json.loads(audit.canonical(stored))["decision"]),
        },
        data_version=dg.DataVersion(sha[:16]),
    )
