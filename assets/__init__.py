"""The flywheel's Dagster assets, one module per stage. Every asset is partitioned by quarter (one cycle)."""

from __future__ import annotations

import dagster as dg

from flywheel_dagster.config import load_config
from flywheel_dagster.partitions import cycle_index, not_a_cycle, previous_cycle, quarterly_partitions

_CONFIG = load_config()
START_DATE = _CONFIG.schedule.start_date
PARTITIONS = quarterly_partitions(START_DATE)


def cycle_of(context) -> tuple[str, int]:  # noqa: ANN001 - any Dagster execution context
    """The partition key (the quarter's first day) and the cycle's index since the flywheel started.

    Every asset starts here, so a run for a key that is not a partition (typed into the Launchpad, or the
    current quarter before it ends) fails in its first step, before any training or registry write."""
    key = context.partition_key
    problem = not_a_cycle(key, START_DATE)
    if problem is not None:
        raise dg.Failure(description=problem, allow_retries=False)
    return key, cycle_index(key, START_DATE)


def previous_of(key: str) -> str | None:
    return previous_cycle(key, START_DATE)


def dagster_tags(context, cfg) -> dict[str, str]:  # noqa: ANN001 - an execution context, a FlywheelConfig
    """Tags that lead from an MLflow run or model version back to the Dagster run that made it (ui.dagster_url)."""
    return {
        "dagster.run_id": context.run_id,
        "dagster.run_url": f"{cfg.ui.dagster_url}/runs/{context.run_id}",
        "dagster.partition": context.partition_key,
    }


def mlflow_run_links(cfg, registry, run_id: str) -> dict[str, object]:  # noqa: ANN001 - FlywheelConfig, Registry
    """The metadata of an MLflow run: its id (kept in the audit record) and a link that opens it in MLflow's UI."""
    return {"mlflow_run_id": run_id, "mlflow_run": dg.MetadataValue.url(registry.run_url(cfg.ui.mlflow_url, run_id))}


def lake_file_result(written, **metadata) -> dg.MaterializeResult:  # noqa: ANN001 - a traces.lake.LakeFile
    """An asset's result for a lake file: row count, URI, sha256 (also its data version), plus `metadata`."""
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written.rows,
            "uri": dg.MetadataValue.path(written.uri),
            "sha256": written.sha256,
            **metadata,
        },
        data_version=dg.DataVersion(written.sha256[:16]),
    )


def gpu_op_tags(gpus: int | None = None) -> dict[str, object]:
    """Op tags of a GPU asset: what dagster-k8s puts on its pod (the GPU limit, GPU nodes, their taints).

    `gpus`: the limit (default compute.gpu.per_step; training passes training.gpus). Read from flywheel.yaml
    when the code location loads; the local executors ignore them.
    """
    gpu = _CONFIG.compute.gpu
    gpus = gpu.per_step if gpus is None else gpus
    if gpus == 0:
        return {}
    pod: dict[str, object] = {}
    if gpu.node_selector:
        pod["node_selector"] = dict(gpu.node_selector)
    if gpu.tolerations:
        pod["tolerations"] = [dict(t) for t in gpu.tolerations]
    k8s: dict[str, object] = {"container_config": {"resources": {"limits": {"nvidia.com/gpu": gpus}}}}
    if pod:
        k8s["pod_spec_config"] = pod
    return {"dagster-k8s/config": k8s}
