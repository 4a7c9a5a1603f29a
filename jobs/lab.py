"""The lab as a Dagster job, for users who launch it from the UI: `flywheel_lab` runs what `flywheel lab` runs,
on the code location's config, and puts the table and the figure's path on the run."""

from pathlib import Path  # (no `from __future__ import annotations`: Dagster reads the op's config type)

import dagster as dg
from pydantic import Field

from flywheel_dagster.resources import FlywheelConfigResource


class LabConfig(dg.Config):
    folder: str = Field(default=".flywheel-lab", description="the lab's folder (a second run resumes it)")
    cycles: int = Field(default=8, ge=1, description="cycles per arm")
    arms: list[str] = Field(default_factory=list, description="arms to run (empty: every built-in arm)")
    arms_file: str = Field(default="", description="a YAML file of your own arms (config overlays)")
    workers: int = Field(default=0, ge=0, description="arms run at once (0: one per two cores)")
    full_size: bool = Field(default=False, description="the preset's own sizes instead of the lab's smaller cycles")


@dg.op(name="lab", description="Several arms of the flywheel side by side for N cycles from one base (docs/lab.md).")
def lab_op(context: dg.OpExecutionContext, config: LabConfig, flywheel_config: FlywheelConfigResource) -> None:
    from flywheel_dagster.lab import open_lab, run

    lab = open_lab(
        Path(config.folder),
        flywheel_config.load(),
        config.cycles,
        config.arms or None,
        Path(config.arms_file) if config.arms_file else None,
        config.full_size,
    )
    done = run(lab, config.workers, say=context.log.info)
    context.add_output_metadata(
        {
            "table": dg.MetadataValue.md(done.table.read_text()),
            "figure": dg.MetadataValue.path(str(done.figure)),
            "seconds": round(done.seconds),
        }
    )
    stopped = {arm: why for arm, why in done.outcome.items() if why != "done"}
    if stopped:
        raise dg.Failure(f"arms stopped (run the job again to resume them): {stopped}")


@dg.job(
    name="flywheel_lab",
    description="flywheel lab: converge or collapse? Each arm a config overlay, N cycles, one base.",
)
def lab_job() -> None:
    lab_op()
