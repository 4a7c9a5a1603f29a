"""Distill: train the candidate from the champion's weights on the cycle's training dataset.

The training itself runs as its own process (flywheel_dagster.training.job), launched through Dagster Pipes:
a subprocess here, a pod on a GPU node on Kubernetes. This asset prepares the job, registers what it
produced and records the run.
"""

import shutil
from pathlib import Path

import dagster as dg

from assets import Stage, dagster_tags, mlflow_run_links, open_cycle
from assets.harvest import pii_in_training_set
from flywheel_dagster import erasure, timing
from flywheel_dagster.records import CANDIDATE_MODEL, DEPLOYMENT, TRAINING_DATASET, Candidate, Deployment, TrainingSet
from flywheel_dagster.registry import BASE_VERSION_TAG, CHAMPION
from flywheel_dagster.resources import FlywheelConfigResource, LakeResource, MlflowResource, TrainingJobResource
from flywheel_dagster.training import candidate
from flywheel_dagster.training.job import TrainJob


def build(stage: Stage) -> list[dg.AssetsDefinition]:
    """candidate_model, in the `gpu` pool. Its step pod asks for training.gpus GPUs, unless the job runs in a pod
    of its own (the kubernetes launcher), which asks for them itself: then the step pod asks for none."""
    deps = [TRAINING_DATASET, DEPLOYMENT]
    gpus = 0 if stage.training_launcher == "kubernetes" else stage.cfg.training.gpus
    return [stage.asset("distill", "2", deps, gpu=True, gpus=gpus)(candidate_model)]


def candidate_model(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
    training: TrainingJobResource,
) -> dg.MaterializeResult:
    """The next model: the champion trained with `training.method` (sft, redi, opsd or grpo), registered as a
    new version (full weights, or a LoRA adapter on the champion)."""
    cfg, key, index, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
    champion = registry.version(Deployment.read(the_lake, key).version)
    live = registry.alias(CHAMPION)
    if live is not None and live.version != champion.version:
        # A finished quarter run again (its deployment resolves the model that served then), or a rollback
        # during the cycle: the candidate would be benchmarked against a model that no longer serves, and
        # champion_model refuses to promote over it. Say so before hours of training, not after.
        raise dg.Failure(
            description=f"cycle {key} deployed v{champion.version}, but v{live.version} is the champion now: "
            "nothing trained. A candidate is compared with the model its cycle deployed, and champion_model "
            "promotes only over the champion of now. If this quarter has finished, its decision is made (run the "
            "next one); after a rollback during the cycle, run the cycle again from its deployment"
        )
    method = cfg.training.method
    # What the job reads: the examples, the pairs (REDI) and the prompts (OPSD, GRPO), as they are now.
    read = {
        n: the_lake.sha256(TRAINING_DATASET, key, n)
        for n in (TrainingSet.EXAMPLES, TrainingSet.PAIRS, TrainingSet.PROMPTS)
        if the_lake.exists(TRAINING_DATASET, key, n)
    }
    # The no_pii check blocks this step only in a run that holds both: one that materializes candidate_model
    # alone (the UI's selection, a re-execution) would train on the training set as it is, even where the check
    # failed. So the step looks itself, at what the job will read.
    found = pii_in_training_set(the_lake, key, cfg.harvest.redact_names)
    if found:
        raise dg.Failure(
            description=f"the training set of cycle {key} holds PII ({found}): nothing was trained. The no_pii "
            "check found it too; rematerialize training_dataset once the harvest redacts it, and see "
            "docs/harvest.md on PII"
        )
    job_id = candidate.job_id(cfg, champion.version, read[TrainingSet.EXAMPLES])
    checkpoint_dir = training.checkpoint_dir(cfg.name, key, job_id)
    links = dagster_tags(context, cfg)
    with registry.stage(key, index, "distill", tags={"flywheel.method": method, **links}) as run_id:
        registry.log_params(run_id, candidate.training_params(cfg, champion.version, the_lake, key, job_id))
        job = TrainJob(
            config=cfg.model_dump(mode="json"),
            cycle=key,
            champion_dir=str(registry.local_path(champion)),
            lake_root=the_lake.location,
            out_dir=str(checkpoint_dir / "model"),
            checkpoint_dir=str(checkpoint_dir),
            tracking_uri=mlflow.tracking_uri,
            run_id=run_id,
        )
        with timing.compute(CANDIDATE_MODEL):  # the job's wall time, process start and model loading included
            result = training.train(context, job)
        adapter = bool(result["adapter"])
        # An erasure request that rewrote the training set while the job trained on it: the model has seen the
        # user's rows, and the request's entry (written before the model existed) does not list it.
        erased = sorted(
            {n for name, sha in read.items() for n in erasure.rewrites_of(the_lake, TRAINING_DATASET, key, name, sha)}
        )
        if erased:
            context.log.warning(
                f"trained on a training set that erasure request(s) {', '.join(f'#{n}' for n in erased)} rewrote while "
                "the job ran: the model has seen the erased users' rows (tagged flywheel.trained_on_erased_data)"
            )
        tags = {
            "flywheel.cycle": key,
            "flywheel.parent_version": champion.version,
            "flywheel.method": method,
            "weights_sha256": result["weights_sha256"],
            **({BASE_VERSION_TAG: champion.version, "flywheel.adapter": "true"} if adapter else {}),
            **({"flywheel.trained_on_erased_data": ",".join(f"#{n}" for n in erased)} if erased else {}),
            **links,
        }
        ref = registry.register_model_dir(run_id, Path(job.out_dir), tags=tags)
        figures = {
            "train_loss": result["train_loss"],
            "tokens_trained": result["tokens_trained"],
            "tokens_generated": result["tokens_generated"],
            "train_seconds": result["seconds"],
            "steps": result["steps"],
            "resumed_from_step": result["resumed_from_step"],
            **({"eval_loss": result["eval_loss"]} if result["eval_loss"] is not None else {}),
            **{f"{method}/{k}": v for k, v in result["extra"].items()},
        }
        registry.log_metrics(run_id, figures)
    Candidate(
        cycle=key,
        version=ref.version,
        run_id=run_id,
        parent_version=champion.version,
        weights_sha256=result["weights_sha256"],
        method=method,
        adapter=adapter,
        job_id=job_id,
        **{k: result[k] for k in Candidate.TRAINING_FIGURES},
    ).write(the_lake)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # registered: the checkpoints have done their job
    return dg.MaterializeResult(
        metadata={
            "model": f"{ref.name} v{ref.version}" + (" (LoRA adapter)" if adapter else ""),
            "parent": f"{champion.name} v{champion.version}",
            "method": method,
            **mlflow_run_links(cfg, registry, run_id),
            "model_version": dg.MetadataValue.url(registry.model_version_url(cfg.ui.mlflow_url, ref.version)),
            "weights_sha256": result["weights_sha256"],
            "examples": result["examples"],
            **({"trained_on_erased_data": ", ".join(f"#{n}" for n in erased)} if erased else {}),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
        },
        data_version=dg.DataVersion(result["weights_sha256"][:16]),
    )
