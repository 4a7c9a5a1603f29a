"""The flywheel's Dagster assets, one module per stage. Every asset is partitioned by quarter (one cycle).

Each stage module holds its asset functions and a `build(stage)` that decorates them with what depends on the
config (partitions from schedule.start_date, GPU pools and pod settings); `build_stages(cfg)` builds them all
from one loaded config, and jobs.definitions binds the same config to the `flywheel_config` resource.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.erasure import hold_during_erasure
from flywheel_dagster.partitions import cycle_index, not_a_cycle, previous_cycle, quarterly_partitions
from flywheel_dagster.registry import Registry
from flywheel_dagster.resources import FlywheelConfigResource, LakeResource, MlflowResource
from flywheel_dagster.traces.lake import Lake, LakeFile


@dataclass(frozen=True)
class Stage:
    """What a stage module's `build` needs: the config the code location loaded, its partitions and the training
    launcher its resources use (TrainingJobResource.launcher)."""

    cfg: FlywheelConfig
    partitions: dg.PartitionsDefinition
    training_launcher: str = "subprocess"

    def asset(
        self, group: str, code_version: str, deps: list[str | dg.AssetDep], gpu: bool = False, gpus: int | None = None
    ) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
        """The decorator of a stage asset: the quarters, its group and code version, and with `gpu` the GPU
        pool and the pod settings (`gpus`: the GPU limit, default compute.gpu.per_step)."""
        on_gpu = {"pool": "gpu", "tags": {"flywheel/compute": "gpu"}, "op_tags": self.gpu_op_tags(gpus)}
        return dg.asset(
            partitions_def=self.partitions,
            group_name=group,
            code_version=code_version,
            deps=deps,
            **(on_gpu if gpu else {}),
        )

    def check(
        self, asset: str, name: str, description: str | None = None
    ) -> Callable[[Callable[..., Any]], dg.AssetChecksDefinition]:
        """The decorator of a blocking check on a stage asset, partitioned like it."""
        return dg.asset_check(
            asset=asset, blocking=True, partitions_def=self.partitions, name=name, description=description
        )

    def gpu_op_tags(self, gpus: int | None = None) -> dict[str, object]:
        """Op tags of a GPU asset: what dagster-k8s puts on its pod (the GPU limit, GPU nodes, their taints).

        `gpus`: the limit (default compute.gpu.per_step; training passes training.gpus). The local executors
        ignore them.
        """
        gpu = self.cfg.compute.gpu
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


@dataclass(frozen=True)
class StageDefs:
    assets: list[dg.AssetsDefinition]
    checks: list[dg.AssetChecksDefinition]


def build_stages(cfg: FlywheelConfig, training_launcher: str = "subprocess") -> StageDefs:
    """Every asset and check of a cycle, decorated from `cfg` (and the training launcher the resources use)."""
    from assets import audit, deploy, distill, harvest, redeploy

    stage = Stage(cfg, quarterly_partitions(cfg.schedule.start_date), training_launcher)
    harvest_assets, harvest_checks = harvest.build(stage)
    redeploy_assets, redeploy_checks = redeploy.build(stage)
    checks = [*harvest_checks, *redeploy_checks]
    built = [*deploy.build(stage), *harvest_assets, *distill.build(stage), *redeploy_assets]
    return StageDefs([*built, *audit.build(stage, checks)], checks)


def cycle_of(context: Any, cfg: FlywheelConfig) -> tuple[str, int]:
    """The partition key (the quarter's first day) and the cycle's index since the flywheel started.

    Every asset starts here, so a run for a key that is not a partition (typed into the Launchpad, or the
    current quarter before it ends) fails in its first step, before any training or registry write."""
    key = context.partition_key
    start = cfg.schedule.start_date
    problem = not_a_cycle(key, start)
    if problem is not None:
        raise dg.Failure(description=problem, allow_retries=False)
    return key, cycle_index(key, start)


def open_cycle(
    context: Any, flywheel_config: FlywheelConfigResource, lake: LakeResource, mlflow: MlflowResource
) -> tuple[FlywheelConfig, str, int, Lake, Registry]:
    """What an asset starts from: the config, the cycle (refused if it is no partition, see cycle_of), its index,
    the lake and the registry."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context, cfg)
    # Before any input is read: a user table's partition is not written from inputs an erasure request ran under.
    the_lake = hold_during_erasure(lake.lake(), error=lambda problem: erasure_retry(context, problem))
    return cfg, key, index, the_lake, mlflow.registry(cfg.name)


# A step refused by an erasure request runs again once it is done: a request reads every partition of the lake
# (minutes on a quarter's), so every ERASURE_RETRY_SECONDS, ERASURE_RETRIES times (half an hour), then it fails
# saying why (a request that stopped half-way holds the user tables until it is run again).
ERASURE_RETRIES = 15
ERASURE_RETRY_SECONDS = 120.0


def erasure_retry(context: Any, problem: str) -> Exception:
    """What a step raises when an erasure request refuses its write (erasure.hold_during_erasure): a retry, the
    reason in its log, while retries are left; then a failure with the reason."""
    if context.retry_number < ERASURE_RETRIES:
        context.log.warning(
            f"{problem} Trying again in {ERASURE_RETRY_SECONDS:g} s ({context.retry_number + 1} of {ERASURE_RETRIES})."
        )
        return dg.RetryRequested(max_retries=ERASURE_RETRIES, seconds_to_wait=ERASURE_RETRY_SECONDS)
    return dg.Failure(description=f"{problem} (Tried {ERASURE_RETRIES + 1} times, {ERASURE_RETRY_SECONDS:g} s apart.)")


def previous_of(key: str, cfg: FlywheelConfig) -> str | None:
    return previous_cycle(key, cfg.schedule.start_date)


def dagster_tags(context: Any, cfg: FlywheelConfig) -> dict[str, str]:
    """Tags that lead from an MLflow run or model version back to the Dagster run that made it (ui.dagster_url)."""
    return {
        "dagster.run_id": context.run_id,
        "dagster.run_url": f"{cfg.ui.dagster_url}/runs/{context.run_id}",
        "dagster.partition": context.partition_key,
    }


def mlflow_run_links(cfg: FlywheelConfig, registry: Registry, run_id: str) -> dict[str, object]:
    """The metadata of an MLflow run: its id (kept in the audit record) and a link that opens it in MLflow's UI."""
    return {"mlflow_run_id": run_id, "mlflow_run": dg.MetadataValue.url(registry.run_url(cfg.ui.mlflow_url, run_id))}


def lake_file_result(written: LakeFile, **metadata: object) -> dg.MaterializeResult:
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
