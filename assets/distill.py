"""Distill: train the candidate from the champion's weights on the cycle's training dataset."""

import json
import tempfile
from pathlib import Path

import dagster as dg

from assets import PARTITIONS, cycle_of
from assets.deploy import deployment
from assets.harvest import training_dataset
from flywheel_dagster import cycle as core
from flywheel_dagster import timing
from flywheel_dagster.registry import weights_sha256
from flywheel_dagster.resources import FlywheelConfigResource, LakeResource, MlflowResource


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="distill",
    code_version="1",
    deps=[training_dataset, deployment],
    pool="gpu",
    tags={"flywheel/compute": "gpu"},
)
def candidate_model(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Rejection-sampling fine-tuning (TRL SFTTrainer) on verified positives; registered as a new version."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context)
    the_lake = lake.lake()
    registry = mlflow.registry(cfg.name)
    deployed = json.loads(the_lake.read_bytes("deployment", key, core.DEPLOYMENT_FILE))
    champion = registry.version(deployed["version"])
    training = the_lake.read_table("training_dataset", key)
    run_id = registry.stage_run(key, index, "distill", tags={"flywheel.method": cfg.training.method})
    registry.log_params(
        run_id,
        {
            **{f"training.{k}": v for k, v in cfg.training.model_dump().items()},
            "parent_version": champion.version,
            "training_dataset_uri": the_lake.uri("training_dataset", key),
            "training_rows": training.num_rows,
        },
    )
    with tempfile.TemporaryDirectory(prefix="flywheel-candidate-") as tmp:
        with timing.compute("candidate_model"):
            result = core.train_candidate(
                cfg,
                registry.local_path(champion),
                training,
                Path(tmp) / "model",
                on_log=registry.curve_logger(run_id),
            )
        sha = weights_sha256(result.model_dir)
        ref = registry.register_model_dir(
            run_id,
            result.model_dir,
            tags={"flywheel.cycle": key, "flywheel.parent_version": champion.version, "weights_sha256": sha},
        )
    registry.log_metrics(
        run_id,
        {
            "train_loss": result.train_loss,
            "tokens_trained": result.tokens_trained,
            "train_seconds": result.seconds,
            **({"eval_loss": result.eval_loss} if result.eval_loss is not None else {}),
        },
    )
    registry.end_run(run_id)
    payload = {
        "cycle": key,
        "version": ref.version,
        "run_id": run_id,
        "parent_version": champion.version,
        "weights_sha256": sha,
        "method": cfg.training.method,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "tokens_trained": result.tokens_trained,
    }
    core.write_json(the_lake, "candidate_model", key, core.CANDIDATE_FILE, payload)
    return dg.MaterializeResult(
        metadata={
            "model": f"{ref.name} v{ref.version}",
            "parent": f"{champion.name} v{champion.version}",
            "method": cfg.training.method,
            "mlflow_run_id": run_id,
            "weights_sha256": sha,
            "steps": result.steps,
            "train_loss": round(result.train_loss, 4),
            "eval_loss": round(result.eval_loss, 4) if result.eval_loss is not None else "n/a",
            "tokens_trained": result.tokens_trained,
            "examples": result.examples,
            "train_seconds": round(result.seconds, 1),
        },
        data_version=dg.DataVersion(sha[:16]),
    )
