"""Rejection-sampling fine-tuning: TRL's SFTTrainer on verified positives, loss on the completion only.

    L = -(1/|y|) * sum_t log p(y_t | x, y_<t)      over prompt/completion pairs (x, y) that passed the verifier

The same function trains the cycle-0 base (on human worked solutions), each `sft` candidate, and stage 1
of `redi`.
"""

from __future__ import annotations

from pathlib import Path

from flywheel_dagster.training.common import TrainingRun, check_rows, dataset, total_steps
from flywheel_dagster.training.settings import OnLog, TrainResult, TrainSettings


def run_sft(
    base_model_dir: str | Path,
    train_rows: list[dict[str, str]],
    out_dir: str | Path,
    settings: TrainSettings,
    eval_rows: list[dict[str, str]] | None = None,
    on_log: OnLog | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Fine-tune the model in base_model_dir on {"prompt", "completion"} rows; save the result to out_dir.

    With a checkpoint_dir, a checkpoint is written every `settings.checkpoint_every` steps and a rerun
    resumes from the newest one.
    """
    from trl import SFTConfig, SFTTrainer

    check_rows(train_rows, ("prompt", "completion"), "sft training rows")
    steps = total_steps(len(train_rows), settings.batch_size, settings.epochs, settings.max_steps)
    with TrainingRun("sft", base_model_dir, out_dir, settings, on_log, checkpoint_dir) as run:
        model, tokenizer = run.load_policy()
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                **run.trainer_args(steps),
                max_length=settings.max_length,
                eval_strategy="epoch" if eval_rows else "no",
                completion_only_loss=True,
            ),
            train_dataset=dataset(train_rows),
            eval_dataset=dataset(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=settings.peft_config(),
        )
        per_epoch = sum(sum(1 for t in labels if t != -100) for labels in trainer.train_dataset["labels"])
        fitted = run.fit(trainer, tokenizer)
        eval_loss = float(trainer.evaluate()["eval_loss"]) if eval_rows else None
    # Tokens the loss saw: every completion token once per epoch (a max_steps run: the share of an epoch).
    per_epoch_steps = total_steps(len(train_rows), settings.batch_size, 1.0, -1)
    epochs_run = fitted.steps / per_epoch_steps if settings.max_steps > 0 else settings.epochs
    return run.result(
        fitted,
        eval_loss=eval_loss,
        tokens_trained=int(per_epoch * epochs_run),
        tokens_generated=0,
        examples=len(train_rows),
    )
