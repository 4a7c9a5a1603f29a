"""The job that runs one whole cycle, and the quarterly schedule built from it."""

from __future__ import annotations

import dagster as dg

from assets import PARTITIONS

flywheel_cycle_job = dg.define_asset_job(
    name="flywheel_cycle",
    selection=dg.AssetSelection.groups("deploy", "harvest", "distill", "redeploy", "audit"),
    partitions_def=PARTITIONS,
    description="One flywheel cycle for one quarter: deploy -> harvest -> distill -> redeploy -> audit.",
)

# What `flywheel approve` / `reject` runs once a decision is recorded: the approval check again, then the
# promotion and the audit record. (With gate.require_approval the cycle job stops before champion_model.)
release_cycle_job = dg.define_asset_job(
    name="release_cycle",
    selection=dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("benchmark_report"), "human_approval"))
    | dg.AssetSelection.assets("champion_model", "cycle_audit"),
    partitions_def=PARTITIONS,
    description="After a human decision: the human_approval check, champion_model and cycle_audit.",
)

# Fires at 00:00 UTC on the first day of a quarter and requests the partition of the quarter that just
# ended (time-window partitions end at the last complete window).
quarterly_schedule = dg.build_schedule_from_partitioned_job(
    flywheel_cycle_job, name="quarterly_flywheel", default_status=dg.DefaultScheduleStatus.STOPPED
)
