"""The quarterly partitions shared by every asset and job: one partition = one flywheel cycle."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

QUARTERLY_CRON = "0 0 1 */3 *"
PARTITION_FORMAT = "%Y-%m-%d"


def quarterly_partitions(start_date: str = "2025-01-01") -> dg.TimeWindowPartitionsDefinition:
    """Quarters starting Jan/Apr/Jul/Oct 1st (UTC); the newest partition is the last quarter that ended."""
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=QUARTERLY_CRON, start=start_date, fmt=PARTITION_FORMAT, timezone="UTC"
    )


def not_a_cycle(key: str, start_date: str) -> str | None:
    """None when `key` is a partition now (a quarter that has ended since start_date), else one line that says
    what the key is and which quarters can run."""
    keys = quarterly_partitions(start_date).get_partition_keys()
    if key in keys:
        return None
    shown = ", ".join(keys) if len(keys) <= 8 else ", ".join([*keys[:3], "...", *keys[-3:]])
    return (
        f"cycle {key!r} is not a partition of this flywheel: expected a quarter that has ended since "
        f"schedule.start_date ({shown or 'none has ended yet'})"
    )


def cycle_index(cycle: str, start_date: str) -> int:
    """0 for the first quarter of the flywheel, 1 for the next, ... (the MLflow step of a cycle's metrics)."""
    c = datetime.strptime(cycle, PARTITION_FORMAT)
    s = datetime.strptime(start_date, PARTITION_FORMAT)
    return (c.year - s.year) * 4 + (c.month - s.month) // 3


def previous_cycle(cycle: str, start_date: str) -> str | None:
    """The quarter before `cycle`, or None for the flywheel's first quarter."""
    if cycle_index(cycle, start_date) <= 0:
        return None
    c = datetime.strptime(cycle, PARTITION_FORMAT)
    month = c.month - 3
    year = c.year - 1 if month <= 0 else c.year
    return f"{year:04d}-{(month - 1) % 12 + 1:02d}-01"
