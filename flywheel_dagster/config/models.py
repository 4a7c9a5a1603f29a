"""The root model of flywheel.yaml: one section per part of the flywheel, checked across sections."""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

from pydantic import Field, model_validator

from flywheel_dagster.config.base import Strict
from flywheel_dagster.config.operations import ComputeConfig, ScheduleConfig, ServingConfig, UiConfig
from flywheel_dagster.config.presets import PresetName
from flywheel_dagster.config.stages import (
    BenchmarkConfig,
    BootstrapConfig,
    EngineConfig,
    GateConfig,
    HarvestConfig,
    IngestConfig,
    ModelConfig,
    TaskConfig,
    TrafficConfig,
    TrainingConfig,
)


class FlywheelConfig(Strict):
    """The whole flywheel: one file, one preset, overridable field by field."""

    preset: PresetName = "playground"
    name: str = Field(default="flywheel", pattern=r"^[A-Za-z0-9_.-]+$")
    task: TaskConfig
    model: ModelConfig
    bootstrap: BootstrapConfig = BootstrapConfig()
    engine: EngineConfig = EngineConfig()
    traffic: TrafficConfig = TrafficConfig()
    ingest: IngestConfig = IngestConfig()
    harvest: HarvestConfig = HarvestConfig()
    training: TrainingConfig = TrainingConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    gate: GateConfig = GateConfig()
    compute: ComputeConfig = ComputeConfig()
    serving: ServingConfig = ServingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    ui: UiConfig = UiConfig()

    def with_absolute_paths(self) -> FlywheelConfig:
        """This config with its local file paths absolute (task.data_dir, ingest.paths, serving.logs_dir,
        harvest.dedup.state_spill_dir), for a process whose working directory differs: a Ray worker."""

        def absolute(p: str | None) -> str | None:
            return p if p is None or "://" in p else os.path.abspath(os.path.expanduser(p))

        d = self.harvest.dedup
        return self.model_copy(
            update={
                "task": self.task.model_copy(update={"data_dir": absolute(self.task.data_dir)}),
                "ingest": self.ingest.model_copy(update={"paths": [absolute(p) for p in self.ingest.paths]}),
                "serving": self.serving.model_copy(update={"logs_dir": absolute(self.serving.logs_dir)}),
                "harvest": self.harvest.model_copy(
                    update={"dedup": d.model_copy(update={"state_spill_dir": absolute(d.state_spill_dir)})}
                ),
            }
        )

    @model_validator(mode="after")
    def _paths_exist(self) -> FlywheelConfig:
        # Caught here, when the file is read, not a stage later when the asset runs.
        if self.task.data_dir and not Path(self.task.data_dir).expanduser().is_dir():
            raise ValueError(f"task.data_dir: folder {self.task.data_dir!r} does not exist")
        for p in self.ingest.paths:
            if "://" in p:  # object storage: checked when read
                continue
            expanded = os.path.expanduser(p)
            if not (glob.glob(expanded, recursive=True) if glob.has_magic(expanded) else Path(expanded).exists()):
                raise ValueError(
                    f"ingest.paths: {p!r} matches no file or folder (relative paths start from the working "
                    f"directory, {os.getcwd()})"
                )
        return self

    @model_validator(mode="after")
    def _ray_installed(self) -> FlywheelConfig:
        # Ray is an extra: a setting that needs it says so when the file is read, not as a step's ImportError.
        wants = [s for s, on in (("compute.engine: ray", self.compute.engine == "ray"),
                                 (f"engine.replicas: {self.engine.replicas}", self.engine.replicas > 1)) if on]  # fmt: skip
        if wants and importlib.util.find_spec("ray") is None:
            raise ValueError(
                f"{' and '.join(wants)} {'needs' if len(wants) == 1 else 'need'} Ray, which this Python environment lacks: "
                "pip install 'flywheel-dagster[ray]' (or set compute.engine: local, engine.replicas: 1)"
            )
        return self

    @model_validator(mode="after")
    def _model_fits_task(self) -> FlywheelConfig:
        if self.model.kind == "hf" and not self.model.hf_path:
            raise ValueError("model.hf_path is required when model.kind is 'hf'")
        if self.model.kind == "playground-tiny" and self.task.source != "playground":
            raise ValueError(
                "model.kind 'playground-tiny' only knows the playground alphabet; use task.source 'playground'"
            )
        if self.model.hidden_size % self.model.num_heads:
            raise ValueError("model.hidden_size must be a multiple of model.num_heads")
        return self
