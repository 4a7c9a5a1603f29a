"""Rejection-sampling fine-tuning: TRL's SFTTrainer on verified positives, loss on the completion only.

    L = -(1/|y|) * sum_t log p(y_t | x, y_<t)      over prompt/completion pairs (x, y) that passed the verifier

The same function trains the cycle-0 base (on human worked solutions), each `sft` candidate, and stage 1
of `redi`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from flywheel_dagster.engines.transformers_engine import pick_device
from flywheel_dagster.training.common import (
    Curve,
    TrainResult,
    TrainSettings,
    dataset,
    fit,
    load_policy,
    quiet,
    total_steps,
    trainer_args,
)


def check_rows(rows: list[dict[str, str]], keys: tuple[str, ...], what: str) -> None:
    if not rows:
        raise ValueError(f"{what} is empty; expected at least one row with {list(keys)}")
    for i, row in enumerate(rows[:5]):
        if not set(keys) <= row.keys():
            raise ValueError(f"{what}: row {i} has keys {sorted(row)}; expected {list(keys)}")


def run_sft(
    base_model_dir: str | Path,
    train_rows: list[dict[str, str]],
    out_dir: str | Path,
    settings: TrainSettings,
    eval_rows: list[dict[str, str]] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Fine-tune the model in base_model_dir on {"prompt", "completion"} rows; save the result to out_dir.

    With a checkpoint_dir, a checkpoint is written every `settings.checkpoint_every` steps and a rerun
    resumes from the newest one.
    """
    from trl import SFTConfig, SFTTrainer

    check_rows(train_rows, ("prompt", "completion"), "sft training rows")
    quiet()
    out_dir = Path(out_dir)
    device = pick_device(settings.device)
    model, tokenizer = load_policy(base_model_dir, device)
    curve = Curve(on_log)
    steps = total_steps(len(train_rows), settings.batch_size, settings.epochs, settings.max_steps)
    with tempfile.TemporaryDirectory(prefix="flywheel-sft-") as scratch:
        ckpt = Path(checkpoint_dir) if checkpoint_dir else Path(scratch)
        args = SFTConfig(
            **trainer_args(settings, ckpt, steps, device, checkpoint_dir is not None),
            max_length=settings.max_length,
            eval_strategy="epoch" if eval_rows else "no",
            completion_only_loss=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset(train_rows),
            eval_dataset=dataset(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=settings.peft_config(),
        )
        per_epoch = sum(sum(1 for t in labels if t != -100) for labels in trainer.train_dataset["labels"])
        output, resumed, seconds, adapter = fit(trainer, curve, ckpt, tokenizer, out_dir, settings.lora)
        eval_loss = float(trainer.evaluate()["eval_loss"]) if eval_rows else None
    # Tokens the loss saw: every completion token once per epoch (a max_steps run: the share of an epoch).
    per_epoch_steps = total_steps(len(train_rows), settings.batch_size, 1.0, -1)
    epochs_run = output.global_step / per_epoch_steps if settings.max_steps > 0 else settings.epochs
    return TrainResult(
        model_dir=out_dir,
        method="sft",
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        eval_loss=eval_loss,
        tokens_trained=int(per_epoch * epochs_run),
        tokens_generated=0,
        examples=len(train_rows),
        seconds=seconds,
        resumed_from_step=resumed,
        adapter=adapter,
        curve=curve.points,
    )
