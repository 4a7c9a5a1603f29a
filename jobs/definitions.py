"""The code location: every asset, check, job, schedule and the resources of the chosen profile.

FLYWHEEL_PROFILE picks the resources (local: everything under $FLYWHEEL_HOME, default .flywheel/;
production: tracking server, object storage, GPUs); flywheel.yaml's compute.profile picks the executor
(local: in-process, or multiprocess with compute.local_executor; kubernetes: dagster-k8s's k8s_job_executor,
one pod per step, GPU steps on GPU nodes). The asset definitions themselves never fork.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import _CONFIG, audit, deploy, distill, harvest, redeploy
from flywheel_dagster.resources import resources_for
from jobs.cycle import flywheel_cycle_job, quarterly_schedule, release_cycle_job


def executor_for(compute) -> dg.ExecutorDefinition:  # noqa: ANN001 - a config.ComputeConfig
    if compute.profile == "kubernetes":
        from dagster_k8s import k8s_job_executor  # the `k8s` extra

        return k8s_job_executor
    if compute.local_executor == "multiprocess":
        return dg.multiprocess_executor
    return dg.in_process_executor


defs = dg.Definitions(
    assets=dg.load_assets_from_modules([deploy, harvest, distill, redeploy, audit]),
    asset_checks=dg.load_asset_checks_from_modules([harvest, redeploy]),
    jobs=[flywheel_cycle_job, release_cycle_job],
    schedules=[quarterly_schedule],
    resources=resources_for(os.environ.get("FLYWHEEL_PROFILE", "local")),
    executor=executor_for(_CONFIG.compute),
)
