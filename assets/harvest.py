"""Harvest: verify, deduplicate, label, and turn the quarter's traces into a training dataset."""

import dagster as dg

from assets import PARTITIONS, cycle_of
from assets.deploy import reasoning_traces
from flywheel_dagster import timing
from flywheel_dagster.curation.harvest import anchors_needed, build_training_dataset, harvest
from flywheel_dagster.resources import FlywheelConfigResource, LakeResource
from flywheel_dagster.tasks import load_task


@dg.asset(partitions_def=PARTITIONS, group_name="harvest", code_version="1", deps=[reasoning_traces])
def harvested_traces(
    context: dg.AssetExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Every trace with its verifier label; negatives and dropped traces stay in the table with a reason."""
    cfg = flywheel_config.load()
    key, _ = cycle_of(context)
    the_lake = lake.lake()
    traces = the_lake.read_table("reasoning_traces", key)
    with timing.compute("harvested_traces"):
        result = harvest(traces, load_task(cfg), cfg.harvest.max_positives_per_problem)
    written = the_lake.write_table("harvested_traces", key, result.harvested)
    counts = result.counts
    verified = counts["positive"] + counts["negative"] + counts["over_cap"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written.rows,
            "uri": dg.MetadataValue.path(written.uri),
            "sha256": written.sha256,
            **{f"count/{k}": v for k, v in sorted(counts.items())},
            "verified_accuracy": round((counts["positive"] + counts["over_cap"]) / max(verified, 1), 4),
        },
        data_version=dg.DataVersion(written.sha256[:16]),
    )


@dg.asset(partitions_def=PARTITIONS, group_name="harvest", code_version="1", deps=[harvested_traces])
def training_dataset(
    context: dg.AssetExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Verified positives plus human anchor examples at the configured share, split train/validation."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context)
    the_lake = lake.lake()
    # The anchor pool covers the most any outcome can need: the share at the most positives this quarter can
    # yield, or the floor when it yields none (plus one spare).
    most_positives = cfg.traffic.problems_per_cycle * min(
        cfg.traffic.samples_per_problem, cfg.harvest.max_positives_per_problem
    )
    pool = max(anchors_needed(most_positives, cfg.harvest.anchor_fraction), cfg.harvest.min_training_examples) + 1
    anchors = load_task(cfg).anchors(pool, seed=1000 + index)
    harvested = the_lake.read_table("harvested_traces", key)
    with timing.compute("training_dataset"):
        table, composition = build_training_dataset(
            harvested,
            anchors,
            cfg.harvest.anchor_fraction,
            cfg.harvest.validation_fraction,
            cfg.harvest.min_training_examples,
        )
    written = the_lake.write_table("training_dataset", key, table)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written.rows,
            "uri": dg.MetadataValue.path(written.uri),
            "sha256": written.sha256,
            **{f"composition/{k}": v for k, v in sorted(composition.items())},
            "anchor_fraction": round(composition["human"] / max(written.rows, 1), 4),
        },
        data_version=dg.DataVersion(written.sha256[:16]),
    )
