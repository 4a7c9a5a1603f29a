"""Audit: one record per cycle of which data, code and decisions produced the model, in a hash chain.

The record (flywheel_dagster.audit.record.cycle_record) is built from what Dagster, the lake and MLflow hold
after the cycle: every stage asset's materialization (run, code version, data version, time), every file of
the cycle's partitions with its sha256, the checks' results, the training run, the models' hashes, the
benchmark and the decision. The Dagster queries are here; the record is built in the library.
"""

import json
from datetime import UTC, datetime

import dagster as dg

from assets import Stage, dagster_tags, mlflow_run_links, open_cycle
from flywheel_dagster import audit
from flywheel_dagster.audit.record import StaleCycle, cycle_record
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.overview import cycle_row, overview_markdown
from flywheel_dagster.records import CHAMPION_MODEL, STAGE_ASSETS
from flywheel_dagster.registry import Registry
from flywheel_dagster.resources import FlywheelConfigResource, LakeResource, MlflowResource
from flywheel_dagster.traces.lake import Lake


def build(stage: Stage, checks: list[dg.AssetChecksDefinition]) -> list[dg.AssetsDefinition]:
    """cycle_audit, which records the results of `checks` (every check of the cycle) with the stages."""
    check_keys = [key for c in checks for key in c.check_keys]

    def cycle_audit(
        context: dg.AssetExecutionContext,
        flywheel_config: FlywheelConfigResource,
        lake: LakeResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        """The cycle's audit record (JSON, in the hash chain) and its HTML report: which data, code and decisions
        produced this quarter's champion. `flywheel audit verify` re-checks every hash in it."""
        cfg, key, index, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
        try:
            record = cycle_record(
                cfg,
                the_lake,
                registry,
                key,
                index,
                _materializations(context.instance, key),
                _checks(context.instance, key, check_keys),
            )
        except StaleCycle as err:
            raise dg.Failure(description=str(err)) from None
        return _append(context, cfg, the_lake, registry, key, index, record)

    return [stage.asset("audit", "2", deps=[CHAMPION_MODEL])(cycle_audit)]


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


def _checks(instance: dg.DagsterInstance, key: str, check_keys: list[dg.AssetCheckKey]) -> dict[str, dict]:
    # Dagster has no public query for a partition's latest check results; this is the one private import.
    from dagster._core.event_api import PartitionKeyFilter

    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        check_keys, partition_filter=PartitionKeyFilter(key=key)
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


def _append(
    context: dg.AssetExecutionContext,
    cfg: FlywheelConfig,
    the_lake: Lake,
    registry: Registry,
    key: str,
    index: int,
    record: dict,
) -> dg.MaterializeResult:
    """Append the record to the chain (unless the latest one for the cycle says the same), write it and its HTML
    page to the lake, and serve the page as an artifact of the cycle's audit run in MLflow."""
    chain = audit.Chain(the_lake)
    audit.ensure_genesis(the_lake, registry)
    previous = chain.latest_cycle_records().get(key)
    if previous is not None and audit.content(previous[0]) == record:
        stored, sha, appended = previous[0], previous[1], False
    else:
        # Refused, as the record's partition would be, when an erasure request started since this step began: the
        # record's file hashes could be from before it.
        stored, sha = audit.append_and_anchor(
            chain,
            registry,
            {**record, "amends": previous[1] if previous else None},
            check=lambda: the_lake.write_guard(audit.AUDIT_TABLE) if the_lake.write_guard else None,
        )
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
        registry.log_artifact(run_id, the_lake.partition_dir(audit.AUDIT_TABLE, key) + "/" + audit.REPORT_FILE)
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
