"""The flywheel's Dagster assets, one module per stage. Every asset is partitioned by quarter (one cycle)."""

from __future__ import annotations

import dagster as dg

from flywheel_dagster.config import load_config
from flywheel_dagster.partitions import cycle_index, previous_cycle, quarterly_partitions

START_DATE = load_config().schedule.start_date
PARTITIONS = quarterly_partitions(START_DATE)


def cycle_of(context) -> tuple[str, int]:  # noqa: ANN001 - any Dagster execution context
    """The partition key (the quarter's first day) and the cycle's index since the flywheel started."""
    key = context.partition_key
    return key, cycle_index(key, START_DATE)


def previous_of(key: str) -> str | None:
    return previous_cycle(key, START_DATE)


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
