"""REDI, Reinforcement Distillation (arXiv 2505.24850): learn from the negatives too.

Stage 1 is SFT on verified positives. Stage 2 trains on (positive y+, negative y-) pairs of the same prompt x
with a reference-free, length-normalised objective and a low learning rate:

    L = -log p(y+|x) / |y+|  +  alpha * log p(y-|x) / |y-|          alpha < 1 (paper: 0.8)

The down-weighted negative term pushes failed reasoning down without letting it dominate (alpha = 1 is the
unstable symmetric case). Built on TRL's DPOTrainer: its paired collator and tokenisation, our loss.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel_dagster.training import trl_hooks
from flywheel_dagster.training.common import MethodTerms, TrainingRun, check_rows, dataset, total_steps
from flywheel_dagster.training.settings import OnLog, TrainResult, TrainSettings
from flywheel_dagster.training.sft import run_sft

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel
    from trl import DPOTrainer

STAGE1_DONE = "stage1.json"


def redi_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The REDI objective on per-token log-probabilities (B, T) and completion masks (B, T).

    Returns (loss, mean positive term log p(y+|x)/|y+|, mean negative term log p(y-|x)/|y-|).
    """
    pos = (chosen_logps * chosen_mask).sum(-1) / chosen_mask.sum(-1).clamp(min=1)
    neg = (rejected_logps * rejected_mask).sum(-1) / rejected_mask.sum(-1).clamp(min=1)
    return (-pos + alpha * neg).mean(), pos.mean(), neg.mean()


@functools.cache
def _redi_trainer_class() -> type[DPOTrainer]:
    """REDITrainer(DPOTrainer), built on first use (TRL is imported here, not with the module)."""
    from trl import DPOTrainer

    trl_hooks.require(DPOTrainer)

    class REDITrainer(MethodTerms, DPOTrainer):
        """DPOTrainer's data path with the REDI loss; no reference model (the objective is reference-free)."""

        def __init__(self, *args: Any, alpha: float, **kwargs: Any) -> None:
            self.redi_alpha = alpha
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
            # precompute_ref_log_probs=True only so that DPOTrainer does not load a reference model.
            return dataset

        def compute_loss(
            self,
            model: PreTrainedModel,
            inputs: dict[str, torch.Tensor],
            return_outputs: bool = False,
            num_items_in_batch: torch.Tensor | None = None,
        ) -> torch.Tensor | tuple[torch.Tensor, Any]:
            completion_mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=labels,
                fused_lm_head=True,
                use_cache=False,
            )
            mask = completion_mask[..., 1:].to(outputs.log_probs.dtype)
            logps = outputs.log_probs[:, -mask.size(1) :]
            chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # the collator stacks [chosen; rejected]
            chosen_mask, rejected_mask = mask.chunk(2, dim=0)
            loss, pos, neg = redi_loss(chosen_logps, chosen_mask, rejected_logps, rejected_mask, self.redi_alpha)
            self.record(model.training, "redi/positive_logp", float(pos.detach()))
            self.record(model.training, "redi/negative_logp", float(neg.detach()))
            self.record(model.training, "redi/negative_term", float(self.redi_alpha * neg.detach()))
            return (loss, outputs) if return_outputs else loss

    return REDITrainer


def run_redi(
    base_model_dir: str | Path,
    train_rows: list[dict[str, str]],
    pair_rows: list[dict[str, str]],
    out_dir: str | Path,
    settings: TrainSettings,
    on_log: OnLog | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Stage 1: SFT on `train_rows` ({prompt, completion}); stage 2: REDI on `pair_rows` ({prompt, chosen, rejected}).

    Stage 1's model is kept in the checkpoint folder, so a rerun after a crash in stage 2 does not redo it.
    """
    from trl import DPOConfig

    check_rows(pair_rows, ("prompt", "chosen", "rejected"), "redi pairs")
    stage2 = dataclasses.replace(settings, learning_rate=settings.redi.learning_rate, epochs=settings.redi.epochs)
    steps = total_steps(len(pair_rows), stage2.batch_size, stage2.epochs, stage2.max_steps)
    with TrainingRun("redi", base_model_dir, out_dir, stage2, on_log, checkpoint_dir, trainer_folder="stage2") as run:
        stage1_dir = run.folder / "stage1-model"
        done = run.folder / STAGE1_DONE
        if done.exists():
            stage1 = json.loads(done.read_text())
        else:
            first = run_sft(
                base_model_dir,
                train_rows,
                stage1_dir,
                settings,
                on_log=None
                if on_log is None
                else lambda step, point: on_log(step, {f"sft/{k}": v for k, v in point.items()}),
                checkpoint_dir=run.folder / "stage1" if checkpoint_dir else None,
            )
            stage1 = {
                "steps": first.steps,
                "loss": first.train_loss,
                "tokens": first.tokens_trained,
                "seconds": first.seconds,
                "adapter": first.adapter,
            }
            done.write_text(json.dumps(stage1))

        # A stage-1 adapter keeps training, so that the candidate is one adapter on the champion.
        model, tokenizer = run.load_policy(stage1_dir, adapter_base=base_model_dir if stage1["adapter"] else None)
        trainer = _redi_trainer_class()(
            model=model,
            args=DPOConfig(**run.trainer_args(steps), max_length=settings.max_length, precompute_ref_log_probs=True),
            train_dataset=dataset([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pair_rows]),
            processing_class=tokenizer,
            peft_config=None if stage1["adapter"] else settings.peft_config(),
            alpha=settings.redi.alpha,
        )
        per_epoch = sum(
            len(c) + len(r)
            for c, r in zip(trainer.train_dataset["chosen_ids"], trainer.train_dataset["rejected_ids"], strict=True)
        )
        fitted = run.fit(trainer, tokenizer)
    negative = run.curve.series("redi/negative_term")
    return run.result(
        # The run's steps and time include stage 1's.
        dataclasses.replace(fitted, steps=stage1["steps"] + fitted.steps, seconds=stage1["seconds"] + fitted.seconds),
        tokens_trained=stage1["tokens"] + int(per_epoch * fitted.steps / max(1, steps) * stage2.epochs),
        tokens_generated=0,
        examples=len(train_rows) + len(pair_rows),
        extra={
            "stage1_loss": stage1["loss"],
            "stage1_steps": stage1["steps"],
            "pairs": len(pair_rows),
            **({"negative_term_last": negative[-1]} if negative else {}),
        },
    )
