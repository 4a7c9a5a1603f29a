"""A cycle's training job: its settings from the config, its rows from the quarter's training_dataset, and the
configured method run on them from the champion's weights (in the asset's process, a subprocess, or a pod; see
`training.job`)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.records import TrainingSet
from flywheel_dagster.tasks.base import TaskSource
from flywheel_dagster.traces.lake import Lake
from flywheel_dagster.training import settings as ts
from flywheel_dagster.training.settings import OnLog, TrainResult, TrainSettings, fingerprint


def train_settings(cfg: FlywheelConfig) -> TrainSettings:
    """The training job's settings, from the `training` section of the config."""
    t, op = cfg.training, cfg.training.on_policy
    lora = None
    if t.lora is not None:
        modules = t.lora.target_modules
        lora = ts.LoraSettings(
            r=t.lora.r,
            alpha=t.lora.alpha,
            dropout=t.lora.dropout,
            target_modules=modules if isinstance(modules, str) else tuple(modules),
            registered_as=t.lora.registered_as,
        )
    return TrainSettings(
        method=t.method,
        learning_rate=t.learning_rate,
        epochs=t.epochs,
        batch_size=t.batch_size,
        max_length=cfg.model.max_length,
        max_steps=t.max_steps,
        seed=t.seed,
        device=cfg.engine.device,
        checkpoint_every=t.checkpoint_every,
        sharding=t.sharding,
        lora=lora,
        redi=ts.RediSettings(alpha=t.redi.alpha, learning_rate=t.redi.learning_rate, epochs=t.redi.epochs),
        on_policy=ts.OnPolicySettings(
            num_generations=op.samples_per_prompt,
            max_new_tokens=op.max_new_tokens or cfg.traffic.max_new_tokens,
            temperature=op.temperature,
        ),
        opsd=ts.OpsdSettings(clip=t.opsd.clip),
        grpo=ts.GrpoSettings(beta=t.grpo.beta, format_reward=t.grpo.format_reward),
    )


def job_id(cfg: FlywheelConfig, champion_version: str, data_sha256: str) -> str:
    """One id per exact training job (settings, champion, data): it names the checkpoint folder, so a rerun of
    the same job resumes there and a changed config or dataset starts afresh."""
    return fingerprint(cfg.training.model_dump(mode="json"), cfg.model.max_length, champion_version, data_sha256)


def training_params(cfg: FlywheelConfig, champion_version: str, lake: Lake, cycle: str, job: str) -> dict[str, object]:
    """The MLflow params of a cycle's training run: the training section, the parent, the data and the job."""
    return {
        **{f"training.{k}": v for k, v in cfg.training.model_dump().items()},
        "parent_version": champion_version,
        "training_dataset_uri": TrainingSet.uri(lake, cycle),
        "training_dataset_sha256": TrainingSet.sha256(lake, cycle),
        "job_id": job,
    }


def train_split(table: pa.Table, columns: list[str]) -> list[dict]:
    return [{k: r[k] for k in columns} for r in table.to_pylist() if r["split"] == "train"]


def on_policy_prompts(table: pa.Table, max_prompts: int | None, selection: str = "all") -> list[dict]:
    """The quarter's training-split prompts for opsd/grpo; past max_prompts, a fixed subset (by hash).

    selection "mixed" keeps the prompts whose traffic samples the champion both solved and failed
    (0 < solved < samples): DAPO's dynamic sampling drops groups whose rewards all agree after sampling them;
    the quarter's traces already say which prompts such groups come from, at no sampling cost.
    """
    if selection == "mixed":
        solved, samples = table.column("solved").to_pylist(), table.column("samples").to_pylist()
        table = table.filter(pa.array([0 < a < b for a, b in zip(solved, samples, strict=True)], pa.bool_()))
    rows = train_split(table, ["prompt", "reference", "solution"])
    if max_prompts is not None and len(rows) > max_prompts:
        rows = sorted(rows, key=lambda r: hashlib.sha256(r["prompt"].encode()).digest())[:max_prompts]
    return rows


def train_candidate(
    cfg: FlywheelConfig,
    task: TaskSource,
    champion_dir: Path,
    lake: Lake,
    cycle: str,
    out_dir: Path,
    checkpoint_dir: Path | None = None,
    on_log: OnLog | None = None,
) -> TrainResult:
    """Train the cycle's candidate from the champion's weights with the configured method.

    Reads the cycle's training_dataset partition: the examples (sft, redi stage 1; the validation split
    gives sft's eval loss), the pairs (redi) or the prompts (opsd, grpo).
    """
    # The methods import torch and TRL: here, not at module level, so the code location loads without them.
    from flywheel_dagster.training.grpo import run_grpo
    from flywheel_dagster.training.opsd import run_opsd
    from flywheel_dagster.training.redi import run_redi
    from flywheel_dagster.training.sft import run_sft

    settings = train_settings(cfg)
    shutil.rmtree(out_dir, ignore_errors=True)
    common = {"out_dir": out_dir, "settings": settings, "on_log": on_log, "checkpoint_dir": checkpoint_dir}
    method = settings.method
    if method in ("sft", "redi"):
        examples = lake.read_table(TrainingSet.TABLE, cycle).select(["prompt", "completion", "split"])
        train = train_split(examples, ["prompt", "completion"])
        val = [
            {"prompt": r["prompt"], "completion": r["completion"]}
            for r in examples.to_pylist()
            if r["split"] != "train"
        ]
        if method == "sft":
            return run_sft(champion_dir, train, eval_rows=val or None, **common)
        pairs = train_split(
            lake.read_table(TrainingSet.TABLE, cycle, TrainingSet.PAIRS), ["prompt", "chosen", "rejected"]
        )
        if not pairs:
            raise ValueError(
                f"training.method 'redi' needs positive/negative pairs of the same prompt; training_dataset {cycle} "
                "has none in its train split (the quarter had no prompt with both a verified and a failed trace)"
            )
        return run_redi(champion_dir, train, pairs, **common)
    op = cfg.training.on_policy
    prompts = on_policy_prompts(
        lake.read_table(TrainingSet.TABLE, cycle, TrainingSet.PROMPTS), op.max_prompts, op.prompts
    )
    if not prompts:
        which = " the champion both solved and failed (on_policy.prompts: mixed)" if op.prompts == "mixed" else ""
        raise ValueError(
            f"training.method {method!r} needs the quarter's prompts{which}; training_dataset {cycle} has none"
        )
    if method == "opsd":
        return run_opsd(champion_dir, prompts, task.teacher_template, **common)
    return run_grpo(champion_dir, prompts, task, **common)
