"""The job that runs one whole cycle, the job that finishes an approved one, and the quarterly schedule."""

from __future__ import annotations

import dagster as dg

from flywheel_dagster.records import BENCHMARK_REPORT, CHAMPION_MODEL


def cycle_jobs(
    partitions: dg.PartitionsDefinition,
) -> tuple[dg.UnresolvedAssetJobDefinition, dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """(flywheel_cycle, release_cycle, the quarterly schedule) over the cycles of `partitions`."""
    flywheel_cycle_job = dg.define_asset_job(
        name="flywheel_cycle",
        selection=dg.AssetSelection.groups("deploy", "harvest", "distill", "redeploy", "audit"),
        partitions_def=partitions,
        description="One flywheel cycle for one quarter: deploy -> harvest -> distill -> redeploy -> audit.",
    )
    # What `flywheel approve` / `reject` runs once a decision is recorded: the approval check again, then the
    # promotion and the audit record. (With gate.require_approval the cycle job stops before champion_model.)
    release_cycle_job = dg.define_asset_job(
        name="release_cycle",
        selection=dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey(BENCHMARK_REPORT), "human_approval"))
        | dg.AssetSelection.assets(CHAMPION_MODEL, "cycle_audit"),
        partitions_def=partitions,
        description="After a human decision: the human_approval check, champion_model and cycle_audit.",
    )
    # Fires at 00:00 UTC on the first day of a quarter and requests the partition of the quarter that just
    # ended (time-window partitions end at the last complete window).
    quarterly_schedule = dg.build_schedule_from_partitioned_job(
        flywheel_cycle_job, name="quarterly_flywheel", default_status=dg.DefaultScheduleStatus.STOPPED
    )
    return flywheel_cycle_job, release_cycle_job, quarterly_schedule
