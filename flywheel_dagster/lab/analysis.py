"""What a lab's cycles say: the accuracy of the model that serves after each cycle, when the monitors first
warned, when accuracy first dropped, and the monitors' lead time, misses and false alarms.

- *Serving accuracy* after cycle k: the candidate's held-out pass@1 if it was promoted, else the champion's
  (the same model as after cycle k-1). Cycle 0 is the base model.
- *A drop*: the first cycle whose serving accuracy is more than `drop` (default 2 points) below the best so far,
  with its whole 95% CI below that best (a dip inside the benchmark's noise is not a drop).
- *A warning*: the first cycle at which any monitor reached its warn (or block) level, judged against the
  lab's base config. A monitor at cycle k judged the traces the cycle-(k-1) model generated, before the
  cycle-k model trained on them: a warning at the drop's own cycle came in time to stop it.
- *Lead time*: drop cycle minus warning cycle, when the warning came first (or at the same cycle).
  A drop without an earlier warning is a *miss*; a warning in an arm that never dropped is a *false alarm*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flywheel_dagster.config import MonitorConfig
from flywheel_dagster.curation.monitors import MONITORS, judge

DROP = 0.02


@dataclass(frozen=True)
class Point:
    cycle: int
    accuracy: float
    ci: tuple[float, float]


def serving_curve(rows: list[dict[str, Any]]) -> list[Point]:
    """Cycle 0 (the base) and the serving model's overall accuracy with its CI after each cycle."""
    if not rows:
        return []
    first = rows[0]["suites"]["overall"]
    points = [Point(0, first["champion"], tuple(first["champion_ci"]))]
    for row in rows:
        o = row["suites"]["overall"]
        if row["decision"] == "promoted":
            points.append(Point(row["cycle"], o["candidate"], tuple(o["candidate_ci"])))
        else:
            points.append(Point(row["cycle"], o["champion"], tuple(o["champion_ci"])))
    return points


def first_drop(points: list[Point], drop: float = DROP) -> int | None:
    """The first cycle whose accuracy is more than `drop` below the best before it, its CI wholly below that best."""
    best = None
    for p in points:
        if best is not None and p.accuracy < best - drop and p.ci[1] < best:
            return p.cycle
        best = p.accuracy if best is None else max(best, p.accuracy)
    return None


def monitor_events(rows: list[dict[str, Any]], levels: MonitorConfig) -> list[tuple[int, str, str, float]]:
    """(cycle, monitor, 'warn' or 'block', value) for every monitor that fired, in cycle order. A cycle recorded
    before verified_accuracy_drop existed gets it from the arm's own verified accuracies, as the harvest
    computes it."""
    events = []
    best: float | None = None
    for row in rows:
        monitors = dict(row["monitors"])
        accuracy = monitors.get("verified_accuracy")
        if "verified_accuracy_drop" not in monitors:
            drop = None if best is None or accuracy is None else round(best - accuracy, 4)
            monitors["verified_accuracy_drop"] = drop
        if accuracy is not None:
            best = accuracy if best is None else max(best, accuracy)
        for name in MONITORS:
            verdict = judge(name, monitors.get(name), levels)
            if verdict.level in ("warn", "block"):
                events.append((row["cycle"], name, verdict.level, verdict.value))
    return events


@dataclass(frozen=True)
class Outcome:
    first_warning: int | None
    warned_by: list[str]
    first_drop: int | None
    lead: int | None
    verdict: str  # "lead N", "missed", "false alarm", "quiet"


def outcome(rows: list[dict[str, Any]], levels: MonitorConfig, drop: float = DROP) -> Outcome:
    events = monitor_events(rows, levels)
    warned = events[0][0] if events else None
    by = sorted({name for cycle, name, _, _ in events if cycle == warned})
    dropped = first_drop(serving_curve(rows), drop)
    if dropped is not None:
        if warned is not None and warned <= dropped:
            return Outcome(warned, by, dropped, dropped - warned, f"lead {dropped - warned}")
        return Outcome(warned, by, dropped, None, "missed")
    if warned is not None:
        return Outcome(warned, by, None, None, "false alarm")
    return Outcome(None, [], None, None, "quiet")
