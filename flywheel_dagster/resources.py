"""Dagster resources: the flywheel config, the trace lake, MLflow and the inference engine.

The asset code is the same on a laptop and in production; only these resources' fields change, picked
per deployment profile from one table (`resources_for`).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from flywheel_dagster.config import FlywheelConfig, flywheel_home, load_config
from flywheel_dagster.registry import Registry
from flywheel_dagster.traces.lake import Lake


class FlywheelConfigResource(dg.ConfigurableResource):
    """flywheel.yaml: path to the file, or empty for $FLYWHEEL_CONFIG / ./flywheel.yaml / the playground preset."""

    path: str = ""
    preset: str = ""

    def load(self) -> FlywheelConfig:
        return load_config(self.path or None, preset=self.preset or None)


class LakeResource(dg.ConfigurableResource):
    """The trace lake's root: a local folder, or a pyarrow filesystem URI (s3://bucket/lake) in production."""

    root: str

    def lake(self) -> Lake:
        return Lake(self.root)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry: SQLite file locally, a tracking server in production."""

    tracking_uri: str
    artifact_location: str = ""
    cache_dir: str = ""

    def registry(self, model_name: str) -> Registry:
        return Registry(self.tracking_uri, model_name, self.artifact_location or None, self.cache_dir or None)


class EngineResource(dg.ConfigurableResource):
    """Where inference runs; the engine kind and batch size come from flywheel.yaml, the device from here."""

    device: str = "auto"

    def load(self, cfg: FlywheelConfig, model_dir: str | Path):  # noqa: ANN201 - InferenceEngine
        from flywheel_dagster.engines.transformers_engine import load_engine

        device = cfg.engine.device if self.device == "auto" else self.device
        return load_engine(cfg.engine.kind, model_dir, device=device, batch_size=cfg.engine.batch_size)


def local_resources(home: str | Path | None = None, config_path: str = "") -> dict[str, dg.ConfigurableResource]:
    """The embedded default: everything under one folder (.flywheel/)."""
    root = flywheel_home(home)
    root.mkdir(parents=True, exist_ok=True)
    return {
        "flywheel_config": FlywheelConfigResource(path=config_path),
        "lake": LakeResource(root=str(root / "lake")),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            artifact_location=(root / "mlartifacts").as_uri(),
            cache_dir=str(root / "models" / "cache"),
        ),
        "engine": EngineResource(),
    }


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """Production: a tracking server, object storage and GPUs, all named by environment variables."""
    return {
        "flywheel_config": FlywheelConfigResource(path=dg.EnvVar("FLYWHEEL_CONFIG")),
        "lake": LakeResource(root=dg.EnvVar("FLYWHEEL_LAKE_ROOT")),
        "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), cache_dir="/tmp/flywheel-models"),
        "engine": EngineResource(device="cuda"),
    }


def resources_for(profile: str, home: str | Path | None = None) -> dict[str, dg.ConfigurableResource]:
    profiles = {"local": lambda: local_resources(home), "production": production_resources}
    if profile not in profiles:
        raise ValueError(f"FLYWHEEL_PROFILE {profile!r}: expected one of {sorted(profiles)}")
    return profiles[profile]()
