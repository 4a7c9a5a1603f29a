"""The training job: one cycle's candidate, trained in its own process and reported back through Dagster Pipes.

`candidate_model` launches it with PipesSubprocessClient here; on Kubernetes the same module runs in a pod
on a GPU node (PipesK8sClient). It reads its inputs from the lake and the champion's folder, logs its
curves to the cycle's MLflow run, writes checkpoints every `training.checkpoint_every` steps (a rerun
resumes from the newest), saves the model to `out_dir` and reports the result as a Pipes custom message.

    python -m flywheel_dagster.training.job              # under Dagster Pipes (the spec comes as extras)
    python -m flywheel_dagster.training.job job.json     # by hand, the same spec in a JSON file

With `training.processes` N > 1 the job runs data-parallel under torchrun, N copies of this module
(`command()` says how): every rank trains its share of each global batch, rank 0 alone saves the model,
logs to MLflow, writes the result and reports through Pipes (the other ranks read the same job spec from
the Pipes context, or the same file).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flywheel_dagster.training.settings import OnLog

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class TrainJob:
    """Everything the job needs, as plain JSON (it crosses a process or a pod boundary)."""

    config: dict[str, Any]  # the flywheel config, model_dump()
    cycle: str
    champion_dir: str
    lake_root: str
    out_dir: str
    checkpoint_dir: str
    tracking_uri: str | None = None
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mlflow_curve_logger(tracking_uri: str, run_id: str) -> OnLog:
    """Each logged training point becomes `train/<name>` metrics of the run, at its step."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)

    def log(step: int, point: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(f"train/{k}", float(v), now, step) for k, v in point.items() if k != "step"]
        if metrics:
            client.log_batch(run_id, metrics=metrics)

    return log


def run_job(job: TrainJob, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the candidate; returns (and writes to the checkpoint folder) the result as JSON."""
    from flywheel_dagster.config import FlywheelConfig
    from flywheel_dagster.registry import weights_sha256
    from flywheel_dagster.tasks import load_task
    from flywheel_dagster.traces.lake import Lake
    from flywheel_dagster.training.candidate import train_candidate
    from flywheel_dagster.training.common import is_main_process

    cfg = FlywheelConfig.model_validate(job.config)
    checkpoint_dir = Path(job.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    to_mlflow = mlflow_curve_logger(job.tracking_uri, job.run_id) if job.tracking_uri and job.run_id and main else None

    def on_log(step: int, point: dict[str, float]) -> None:
        if to_mlflow is not None:
            to_mlflow(step, point)
        if log is not None and "loss" in point:
            log(f"step {step}: loss {point['loss']:.4f}")

    result = train_candidate(
        cfg,
        load_task(cfg),
        Path(job.champion_dir),
        Lake(job.lake_root),
        job.cycle,
        Path(job.out_dir),
        checkpoint_dir=checkpoint_dir,
        on_log=on_log,
    )
    if not main:
        return result.as_dict()
    payload = {**result.as_dict(), "weights_sha256": weights_sha256(result.model_dir)}
    (checkpoint_dir / RESULT_FILE).write_text(json.dumps(payload, indent=2))
    return payload


def command(python: str, processes: int, module: str = "flywheel_dagster.training.job") -> list[str]:
    """The job's command line: the module itself, or torchrun starting `processes` ranks of it on this machine
    (or pod) that find each other on a free local port."""
    if processes <= 1:
        return [python, "-m", module]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", module]


def _pipes_job() -> TrainJob:
    """A non-zero rank's job spec: read from the Pipes context that rank 0 opens (without opening it again)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as data:
        return TrainJob(**data["extras"]["job"])


def main(argv: list[str]) -> int:
    from flywheel_dagster.training.common import is_main_process

    if len(argv) > 1:
        payload = run_job(TrainJob(**json.loads(Path(argv[1]).read_text())), log=print)
        if is_main_process():
            print(json.dumps(payload, indent=2))
        return 0
    if not is_main_process():
        run_job(_pipes_job())
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        job = TrainJob(**pipes.get_extra("job"))
        pipes.log.info(f"training {job.cycle} with {job.config['training']['method']} from {job.champion_dir}")
        payload = run_job(job, log=pipes.log.info)
        pipes.report_custom_message(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
