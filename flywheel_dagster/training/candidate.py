"""A cycle's training job: its settings from the config, its rows from the quarter's training_dataset, and the
configured method run on them from the champion's weights (in the asset's process, a subprocess, or a pod; see
`training.job`)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.tasks.base import TaskSource
from flywheel_dagster.traces.lake import Lake
from flywheel_dagster.traces.schema import PAIRS_FILE, PROMPTS_FILE
from flywheel_dagster.training.common import LoraSettings, TrainResult, TrainSettings


def train_settings(cfg: FlywheelConfig) -> TrainSettings:
    """The training job's settings, from the `training` section of the config."""
    t, op = cfg.training, cfg.training.on_policy
    lora = None
    if t.lora is not None:
        modules = t.lora.target_modules
        lora = LoraSettings(
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
        lora=lora,
        redi_alpha=t.redi.alpha,
        redi_learning_rate=t.redi.learning_rate,
        redi_epochs=t.redi.epochs,
        num_generations=op.samples_per_prompt,
        max_new_tokens=op.max_new_tokens or cfg.traffic.max_new_tokens,
        temperature=op.temperature,
        opsd_clip=t.opsd.clip,
        grpo_beta=t.grpo.beta,
        grpo_format_reward=t.grpo.format_reward,
    )


def train_split(table: pa.Table, columns: list[str]) -> list[dict]:
    return [{k: r[k] for k in columns} for r in table.to_pylist() if r["split"] == "train"]


def on_policy_prompts(table: pa.Table, max_prompts: int | None) -> list[dict]:
    """The quarter's training-split prompts for opsd/grpo; past max_prompts, a fixed subset (by hash)."""
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
    on_log=None,  # noqa: ANN001
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
        examples = lake.read_table("training_dataset", cycle).select(["prompt", "completion", "split"])
        train = train_split(examples, ["prompt", "completion"])
        val = [
            {"prompt": r["prompt"], "completion": r["completion"]}
            for r in examples.to_pylist()
            if r["split"] != "train"
        ]
        if method == "sft":
            return run_sft(champion_dir, train, eval_rows=val or None, **common)
        pairs = train_split(lake.read_table("training_dataset", cycle, PAIRS_FILE), ["prompt", "chosen", "rejected"])
        if not pairs:
            raise ValueError(
                f"training.method 'redi' needs positive/negative pairs of the same prompt; training_dataset {cycle} "
                "has none in its train split (the quarter had no prompt with both a verified and a failed trace)"
            )
        return run_redi(champion_dir, train, pairs, **common)
    prompts = on_policy_prompts(
        lake.read_table("training_dataset", cycle, PROMPTS_FILE), cfg.training.on_policy.max_prompts
    )
    if not prompts:
        raise ValueError(f"training.method {method!r} needs the quarter's prompts; training_dataset {cycle} has none")
    if method == "opsd":
        return run_opsd(champion_dir, prompts, task.teacher_template, **common)
    return run_grpo(champion_dir, prompts, task, **common)
