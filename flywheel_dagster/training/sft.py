"""Rejection-sampling fine-tuning: TRL's SFTTrainer on verified positives, loss on the completion only.

    L = -(1/|y|) * sum_t log p(y_t | x, y_<t)      over prompt/completion pairs (x, y) that passed the verifier

The same function trains the cycle-0 base (on human worked solutions) and each cycle's candidate.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flywheel_dagster.engines.transformers_engine import pick_device


@dataclass(frozen=True)
class SFTSettings:
    learning_rate: float
    epochs: float
    batch_size: int
    max_length: int
    max_steps: int = -1
    seed: int = 0
    warmup_ratio: float = 0.05
    device: str = "auto"


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    train_loss: float
    eval_loss: float | None
    tokens_trained: int
    examples: int
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)


def _dataset(rows: list[dict[str, str]]):  # noqa: ANN202 - datasets.Dataset
    """A Dataset whose fingerprint is the hash of its rows (no pickling of the table to fingerprint it)."""
    import pyarrow as pa
    from datasets import Dataset

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return Dataset(pa.Table.from_pylist(rows), fingerprint=digest)


def run_sft(
    base_model_dir: str | Path,
    train_rows: list[dict[str, str]],
    out_dir: str | Path,
    settings: SFTSettings,
    eval_rows: list[dict[str, str]] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fine-tune the model in base_model_dir on {"prompt", "completion"} rows; save the result to out_dir."""
    import datasets
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if not train_rows:
        raise ValueError("run_sft: train_rows is empty; expected at least one {'prompt', 'completion'} row")
    for i, row in enumerate(train_rows[:5]):
        if not {"prompt", "completion"} <= row.keys():
            raise ValueError(f"run_sft: train row {i} has keys {sorted(row)}; expected 'prompt' and 'completion'")

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    out_dir = Path(out_dir)
    device = pick_device(settings.device)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    curve: list[dict[str, float]] = []

    class _Curve(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003
            if not logs:
                return
            point = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and math.isfinite(v)}
            point["step"] = float(state.global_step)
            curve.append(point)
            if on_log is not None:
                on_log(state.global_step, point)

    n_steps_epoch = max(1, math.ceil(len(train_rows) / settings.batch_size))
    total_steps = settings.max_steps if settings.max_steps > 0 else math.ceil(n_steps_epoch * settings.epochs)
    args = SFTConfig(
        output_dir=str(out_dir / "_trainer"),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        max_length=settings.max_length,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, int(settings.warmup_ratio * total_steps)),
        logging_steps=max(1, total_steps // 25),
        eval_strategy="epoch" if eval_rows else "no",
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        dataloader_num_workers=0,
        disable_tqdm=True,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(train_rows),
        eval_dataset=_dataset(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=[_Curve()],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    tokens = sum(sum(1 for t in labels if t != -100) for labels in trainer.train_dataset["labels"])
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    eval_loss = None
    if eval_rows:
        eval_loss = float(trainer.evaluate()["eval_loss"])
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return TrainResult(
        model_dir=out_dir,
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        eval_loss=eval_loss,
        tokens_trained=int(tokens * settings.epochs),
        examples=len(train_rows),
        seconds=seconds,
        curve=curve,
    )
