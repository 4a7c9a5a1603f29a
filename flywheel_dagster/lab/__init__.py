"""The flywheel lab: several arms of the same flywheel, side by side for N cycles from one base model.

`flywheel lab` and the Dagster job `flywheel_lab` both call `run`. See docs/lab.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flywheel_dagster.config import FlywheelConfig, merged
from flywheel_dagster.lab.arms import ArmError, select_arms
from flywheel_dagster.lab.runner import PLAYGROUND_LAB_SIZE, Lab, prepare, run_lab

__all__ = ["ArmError", "LabRun", "open_lab", "run"]


@dataclass
class LabRun:
    lab: Lab
    outcome: dict[str, str]  # arm -> "done" or why it stopped
    table: Path
    figure: Path
    seconds: float


def open_lab(
    folder: Path,
    cfg: FlywheelConfig,
    cycles: int,
    arms: list[str] | None = None,
    arms_file: Path | None = None,
    full_size: bool = False,
) -> Lab:
    """The lab in `folder` for `cfg` (on the playground, at the lab's smaller sizes unless full_size); raises
    ArmError or ConfigError naming what is wrong before anything runs."""
    base = cfg.model_dump(mode="json")
    if cfg.preset == "playground" and not full_size:
        base = merged(base, PLAYGROUND_LAB_SIZE)
    return prepare(folder.resolve(), base, select_arms(arms, cycles, arms_file), cycles)


def run(lab: Lab, workers: int = 0, say: Callable[[str], None] = print) -> LabRun:
    """Bootstrap the base once, run every arm's missing cycles (`workers` at a time, sharing the cores; 0: one
    per core, up to one per arm), then write the table and the figure."""
    from flywheel_dagster.lab import report

    started = time.perf_counter()
    workers = workers or min(os.cpu_count() or 1, len(lab.arms))
    say(
        f"lab {lab.folder}: {len(lab.arms)} arms x {lab.cycles} cycles ({lab.quarters[0]} .. {lab.quarters[-1]}), "
        f"{workers} at a time"
    )
    outcome = run_lab(lab, workers, say)
    md, png = report.write(lab)
    return LabRun(lab, outcome, md, png, time.perf_counter() - started)
