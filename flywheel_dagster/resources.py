"""Dagster resources: the flywheel config, the trace lake, MLflow and the inference engine.

The asset code is the same on a laptop and in production; only these resources' fields change, picked
per deployment profile from one table (`resources_for`).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

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


class TrainingJobResource(dg.ConfigurableResource):
    """Where training jobs run: a process launched through Dagster Pipes, with checkpoints under checkpoint_root.

    Locally the job is a subprocess (PipesSubprocessClient). The checkpoint root must outlive a crashed run
    (a rerun resumes from it): a local folder here, a persistent volume on Kubernetes.
    """

    checkpoint_root: str
    python: str = Field(default="", description="interpreter for the job; default: the one running Dagster")

    def checkpoint_dir(self, model_name: str, cycle: str, fingerprint: str) -> Path:
        return Path(self.checkpoint_root) / model_name / f"cycle={cycle}" / fingerprint

    def train(self, context: dg.AssetExecutionContext, job) -> dict:  # noqa: ANN001 - training.job.TrainJob
        """Run the job (or reuse the result a finished, unregistered run left behind); returns its result."""
        import json
        import sys

        from flywheel_dagster.training.job import RESULT_FILE

        done = Path(job.checkpoint_dir) / RESULT_FILE
        if done.exists() and Path(job.out_dir).is_dir():
            context.log.info(f"training job already finished in {job.checkpoint_dir}; registering its model")
            return json.loads(done.read_text())
        client = dg.PipesSubprocessClient()
        invocation = client.run(
            context=context,
            command=[self.python or sys.executable, "-m", "flywheel_dagster.training.job"],
            extras={"job": job.as_dict()},
        )
        messages = invocation.get_custom_messages()
        if not messages:
            raise RuntimeError(f"the training job for {job.cycle} exited without reporting a result")
        return messages[-1]


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
        "training": TrainingJobResource(checkpoint_root=str(root / "checkpoints")),
    }


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """Production: a tracking server, object storage and GPUs, all named by environment variables."""
    return {
        "flywheel_config": FlywheelConfigResource(path=dg.EnvVar("FLYWHEEL_CONFIG")),
        "lake": LakeResource(root=dg.EnvVar("FLYWHEEL_LAKE_ROOT")),
        "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), cache_dir="/tmp/flywheel-models"),
        "engine": EngineResource(device="cuda"),
        "training": TrainingJobResource(checkpoint_root=dg.EnvVar("FLYWHEEL_CHECKPOINT_ROOT")),
    }


def resources_for(profile: str, home: str | Path | None = None) -> dict[str, dg.ConfigurableResource]:
    profiles = {"local": lambda: local_resources(home), "production": production_resources}
    if profile not in profiles:
        raise ValueError(f"FLYWHEEL_PROFILE {profile!r}: expected one of {sorted(profiles)}")
    return profiles[profile]()
