"""The code location: every asset, check, job, schedule and the resources of the chosen profile.

`build_defs(cfg)` builds them from one loaded, validated config: the assets' partitions, GPU pools and pod
settings, the executor, and the `flywheel_config` resource, which hands the same config to every asset at
run time. FLYWHEEL_PROFILE picks the resources (local: everything under $FLYWHEEL_HOME, default .flywheel/;
production: tracking server, object storage, GPUs); flywheel.yaml's compute.profile picks the executor
(local: in-process, or multiprocess with compute.local_executor; kubernetes: dagster-k8s's k8s_job_executor,
one pod per step, GPU steps on GPU nodes). The asset definitions themselves never fork.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import build_stages
from flywheel_dagster.config import ComputeConfig, FlywheelConfig, load_config
from flywheel_dagster.partitions import quarterly_partitions
from flywheel_dagster.resources import FlywheelConfigResource, resources_for
from jobs.cycle import cycle_jobs
from jobs.lab import lab_job


def executor_for(compute: ComputeConfig) -> dg.ExecutorDefinition:
    if compute.profile == "kubernetes":
        from dagster_k8s import k8s_job_executor  # the `k8s` extra

        return k8s_job_executor
    if compute.local_executor == "multiprocess":
        return dg.multiprocess_executor
    return dg.in_process_executor


def build_defs(cfg: FlywheelConfig, profile: str | None = None) -> dg.Definitions:
    """The code location for `cfg`, with the resources of `profile` (default $FLYWHEEL_PROFILE, else local)."""
    resources = resources_for(profile or os.environ.get("FLYWHEEL_PROFILE", "local"))
    stages = build_stages(cfg, resources["training"].launcher)  # candidate_model's pod asks for GPUs or not by it
    cycle_job, release_job, schedule = cycle_jobs(quarterly_partitions(cfg.schedule.start_date))
    resources["flywheel_config"] = FlywheelConfigResource.bound(cfg)
    return dg.Definitions(
        assets=stages.assets,
        asset_checks=stages.checks,
        jobs=[cycle_job, release_job, lab_job],
        schedules=[schedule],
        resources=resources,
        executor=executor_for(cfg.compute),
    )


defs = build_defs(load_config())
