"""Dagster resources: the flywheel config, the trace lake, MLflow and the inference engine.

The asset code is the same on a laptop and in production; only these resources' fields change, picked
per deployment profile from one table (`resources_for`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from flywheel_dagster.config import FlywheelConfig, flywheel_home, load_config
from flywheel_dagster.engines.base import InferenceEngine
from flywheel_dagster.registry import Registry
from flywheel_dagster.traces.lake import Lake

if TYPE_CHECKING:
    from flywheel_dagster.training.job import TrainJob


class FlywheelConfigResource(dg.ConfigurableResource):
    """The flywheel's config. The code location binds the config it built its definitions from (`bound`), so the
    assets run with the very settings their partitions and pools came from; unbound, it reads flywheel.yaml from
    `path`, or $FLYWHEEL_CONFIG / ./flywheel.yaml / the playground preset."""

    path: str = ""
    preset: str = ""
    config_json: str = Field(default="", description="the validated config, as JSON, that the code location loaded")

    @classmethod
    def bound(cls, cfg: FlywheelConfig) -> FlywheelConfigResource:
        return cls(config_json=cfg.model_dump_json())

    def load(self) -> FlywheelConfig:
        if self.config_json:
            return FlywheelConfig.model_validate_json(self.config_json)
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

    def device_for(self, cfg: FlywheelConfig) -> str:
        return cfg.engine.device if self.device == "auto" else self.device

    def identity(self, cfg: FlywheelConfig) -> str:
        """What besides the model decides this engine's samples (engines.base.engine_identity)."""
        from flywheel_dagster.engines.base import engine_identity

        e = cfg.engine
        return engine_identity(e.kind, self.device_for(cfg), e.replicas, e.shard_prompts)

    def load(self, cfg: FlywheelConfig, model_dir: str | Path) -> InferenceEngine:
        from flywheel_dagster.engines.transformers_engine import load_engine

        device = self.device_for(cfg)
        e = cfg.engine
        if e.replicas > 1:
            from flywheel_dagster.engines.replicas import EngineSpec, ReplicatedEngine

            spec = EngineSpec(
                e.kind,
                str(model_dir),
                device,
                e.batch_size,
                kv_cache_bytes=e.kv_cache_bytes,
                tensor_parallel=e.tensor_parallel,
            )
            return ReplicatedEngine(
                spec, e.replicas, e.shard_prompts, address=cfg.compute.ray_address, cpus_per_replica=e.cpus_per_replica
            )
        return load_engine(
            e.kind,
            model_dir,
            device=device,
            batch_size=e.batch_size,
            kv_cache_bytes=e.kv_cache_bytes,
            tensor_parallel=e.tensor_parallel,
        )


class ServingResource(dg.ConfigurableResource):
    """Where the running gateway (`flywheel serve`) says how to reach it: its state file (URL + operator token).
    champion_model switches that gateway to a newly promoted champion; no file, no running server."""

    state_file: str

    def path(self) -> Path:
        return Path(self.state_file)


TRAINING_LAUNCHERS = ("subprocess", "kubernetes", "in_process")


def launcher_from_env() -> str:
    """The training launcher the deployment names ($FLYWHEEL_TRAINING_LAUNCHER, default subprocess). The code
    location builds candidate_model from the bound resource's launcher: with `kubernetes` its step pod asks for
    no GPU of its own (else it and the training pod would hold training.gpus GPUs each)."""
    return os.environ.get("FLYWHEEL_TRAINING_LAUNCHER", "subprocess")


class TrainingJobResource(dg.ConfigurableResource):
    """Where training jobs run: a process launched through Dagster Pipes, with checkpoints under checkpoint_root.

    Locally the job is a subprocess (PipesSubprocessClient). The checkpoint root must outlive a crashed run
    (a rerun resumes from it): a local folder here, a persistent volume on Kubernetes. `in_process` runs the
    same job function in the step's own process, without Pipes: for a debugger or a notebook, and where the
    job's process start (about 18 s importing torch, transformers and TRL on two cores) outweighs a tiny
    model's training, as in the test suite.
    """

    checkpoint_root: str
    python: str = Field(default="", description="interpreter for the job; default: the one running Dagster")
    launcher: str = Field(
        default="subprocess",
        description="subprocess (PipesSubprocessClient), kubernetes (PipesK8sClient: its own GPU pod) or "
        "in_process (the step's own process, no Pipes)",
    )
    image: str = Field(default="", description="kubernetes launcher: the training pod's image")
    namespace: str = Field(default="", description="kubernetes launcher: namespace (default: the current one)")
    checkpoint_claim: str = Field(
        default="", description="kubernetes launcher: PersistentVolumeClaim mounted at checkpoint_root"
    )

    def checkpoint_dir(self, model_name: str, cycle: str, fingerprint: str) -> Path:
        return Path(self.checkpoint_root) / model_name / f"cycle={cycle}" / fingerprint

    def train(self, context: dg.AssetExecutionContext, job: TrainJob) -> dict:
        """Run the job (or reuse the result a finished, unregistered run left behind); returns its result."""
        import json
        import sys

        from flywheel_dagster.training.job import RESULT_FILE, command

        done = Path(job.checkpoint_dir) / RESULT_FILE
        if done.exists() and Path(job.out_dir).is_dir():
            context.log.info(f"training job already finished in {job.checkpoint_dir}; registering its model")
            return json.loads(done.read_text())
        if self.launcher == "kubernetes":
            from dagster_k8s import PipesK8sClient  # the `k8s` extra

            cfg = FlywheelConfig.model_validate(job.config)
            invocation = PipesK8sClient().run(
                context=context,
                image=self.image or None,
                command=command("python", cfg.training.processes),
                namespace=self.namespace or None,
                base_pod_spec=training_pod_spec(cfg, self.checkpoint_root, self.checkpoint_claim),
                extras={"job": job.as_dict()},
            )
        elif self.launcher == "subprocess":
            processes = FlywheelConfig.model_validate(job.config).training.processes
            invocation = dg.PipesSubprocessClient().run(
                context=context,
                command=command(self.python or sys.executable, processes),
                extras={"job": job.as_dict()},
            )
        elif self.launcher == "in_process":
            from flywheel_dagster.training.job import run_job

            if (processes := FlywheelConfig.model_validate(job.config).training.processes) > 1:
                raise ValueError(
                    f"training.processes is {processes}, but the in_process launcher trains in this one process; "
                    "use the subprocess launcher (torchrun) or training.processes 1"
                )
            context.log.info(f"training {job.cycle} with {job.config['training']['method']} in this process")
            return run_job(job, log=context.log.info)
        else:
            raise ValueError(f"training launcher {self.launcher!r}: expected one of {list(TRAINING_LAUNCHERS)}")
        messages = invocation.get_custom_messages()
        if not messages:
            raise RuntimeError(f"the training job for {job.cycle} exited without reporting a result")
        return messages[-1]


def training_pod_spec(cfg: FlywheelConfig, checkpoint_root: str, checkpoint_claim: str = "") -> dict:
    """The training pod's spec for PipesK8sClient: training.gpus GPUs on the GPU nodes of compute.gpu, the
    checkpoint volume (a rerun resumes from it, so it must outlive the pod) and, for several ranks, a
    memory-backed /dev/shm: NCCL's ranks share memory through it, and a container's default is 64 MB."""
    container: dict = {"resources": {"limits": {"nvidia.com/gpu": cfg.training.gpus}}}
    spec: dict = {"containers": [container]}
    volumes, mounts = [], []
    if cfg.compute.gpu.node_selector:
        spec["node_selector"] = dict(cfg.compute.gpu.node_selector)
    if cfg.compute.gpu.tolerations:
        spec["tolerations"] = [dict(t) for t in cfg.compute.gpu.tolerations]
    if checkpoint_claim:
        volumes.append({"name": "checkpoints", "persistent_volume_claim": {"claim_name": checkpoint_claim}})
        mounts.append({"name": "checkpoints", "mount_path": checkpoint_root})
    if cfg.training.processes > 1:
        volumes.append({"name": "dshm", "empty_dir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mount_path": "/dev/shm"})
    if volumes:
        spec["volumes"], container["volume_mounts"] = volumes, mounts
    return spec


def local_resources(
    home: str | Path | None = None, config_path: str = "", training_launcher: str | None = None
) -> dict[str, dg.ConfigurableResource]:
    """The embedded default: everything under one folder (.flywheel/). The training launcher: the argument, else
    $FLYWHEEL_TRAINING_LAUNCHER, else a subprocess."""
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
        "training": TrainingJobResource(
            checkpoint_root=str(root / "checkpoints"),
            launcher=training_launcher or launcher_from_env(),
        ),
        "serving": ServingResource(state_file=str(root / "serving" / "gateway.json")),
    }


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """Production: a tracking server, object storage and GPUs, all named by environment variables."""
    return {
        "flywheel_config": FlywheelConfigResource(path=dg.EnvVar("FLYWHEEL_CONFIG")),
        "lake": LakeResource(root=dg.EnvVar("FLYWHEEL_LAKE_ROOT")),
        # The model cache sits on the checkpoint volume, so a training pod launched through PipesK8sClient
        # finds the champion's weights where the step that launched it put them.
        "mlflow": MlflowResource(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
            cache_dir=os.environ.get("FLYWHEEL_CHECKPOINT_ROOT", "/tmp") + "/model-cache",
        ),
        "engine": EngineResource(device="cuda"),
        "training": TrainingJobResource(
            checkpoint_root=dg.EnvVar("FLYWHEEL_CHECKPOINT_ROOT"),
            launcher=launcher_from_env(),
            image=os.environ.get("FLYWHEEL_TRAINING_IMAGE", ""),
            checkpoint_claim=os.environ.get("FLYWHEEL_CHECKPOINT_CLAIM", ""),
        ),
        # The gateway's state file on a volume shared with it (mounted where the gateway writes it).
        "serving": ServingResource(
            state_file=os.environ.get("FLYWHEEL_GATEWAY_STATE", "/flywheel/serving/gateway.json")
        ),
    }


def resources_for(profile: str, home: str | Path | None = None) -> dict[str, dg.ConfigurableResource]:
    profiles = {"local": lambda: local_resources(home), "production": production_resources}
    if profile not in profiles:
        raise ValueError(f"FLYWHEEL_PROFILE {profile!r}: expected one of {sorted(profiles)}")
    return profiles[profile]()
