"""REDI, Reinforcement Distillation (arXiv 2505.24850): learn from the negatives too.

Stage 1 is SFT on verified positives. Stage 2 trains on (positive y+, negative y-) pairs of the same prompt x
with a reference-free, length-normalised objective and a low learning rate:

    L = -log p(y+|x) / |y+|  +  alpha * log p(y-|x) / |y-|          alpha < 1 (paper: 0.8)

The down-weighted negative term pushes failed reasoning down without letting it dominate (alpha = 1 is the
unstable symmetric case). Built on TRL's DPOTrainer: its paired collator and tokenisation, our loss.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from flywheel_dagster.engines.transformers_engine import pick_device
from flywheel_dagster.training.common import (
    Curve,
    TrainResult,
    TrainSettings,
    dataset,
    fit,
    quiet,
    total_steps,
    trainer_args,
)
from flywheel_dagster.training.sft import check_rows, run_sft

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


def _redi_trainer_class():  # noqa: ANN202 - a DPOTrainer subclass (TRL imported lazily)
    from trl import DPOTrainer

    class REDITrainer(DPOTrainer):
        """DPOTrainer's data path with the REDI loss; no reference model (the objective is reference-free)."""

        def __init__(self, *args, alpha: float, **kwargs) -> None:  # noqa: ANN002, ANN003
            self.redi_alpha = alpha
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):  # noqa: ANN001, ANN202
            # precompute_ref_log_probs=True only so that DPOTrainer does not load a reference model.
            return dataset

        def _compute_loss(self, model, inputs, return_outputs):  # noqa: ANN001, ANN202
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
            mode = "train" if model.training else "eval"
            self._metrics[mode]["redi/positive_logp"].append(float(pos.detach()))
            self._metrics[mode]["redi/negative_logp"].append(float(neg.detach()))
            self._metrics[mode]["redi/negative_term"].append(float(self.redi_alpha * neg.detach()))
            return (loss, outputs) if return_outputs else loss

    return REDITrainer


def run_redi(
    base_model_dir: str | Path,
    train_rows: list[dict[str, str]],
    pair_rows: list[dict[str, str]],
    out_dir: str | Path,
    settings: TrainSettings,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Stage 1: SFT on `train_rows` ({prompt, completion}); stage 2: REDI on `pair_rows` ({prompt, chosen, rejected}).

    Stage 1's model is kept in the checkpoint folder, so a rerun after a crash in stage 2 does not redo it.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    check_rows(pair_rows, ("prompt", "chosen", "rejected"), "redi pairs")
    quiet()
    out_dir = Path(out_dir)
    device = pick_device(settings.device)
    with tempfile.TemporaryDirectory(prefix="flywheel-redi-") as scratch:
        root = Path(checkpoint_dir) if checkpoint_dir else Path(scratch)
        stage1_dir = root / "stage1-model"
        done = root / STAGE1_DONE
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
                checkpoint_dir=root / "stage1" if checkpoint_dir else None,
            )
            stage1 = {
                "steps": first.steps,
                "loss": first.train_loss,
                "tokens": first.tokens_trained,
                "seconds": first.seconds,
                "adapter": first.adapter,
            }
            done.write_text(json.dumps(stage1))

        tokenizer = AutoTokenizer.from_pretrained(stage1_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if stage1["adapter"]:
            # Keep training the stage-1 adapter, so the candidate is one adapter on the champion.
            base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, stage1_dir, is_trainable=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(stage1_dir, dtype=torch.float32)
        stage2 = dataclasses.replace(settings, learning_rate=settings.redi_learning_rate, epochs=settings.redi_epochs)
        steps = total_steps(len(pair_rows), stage2.batch_size, stage2.epochs, stage2.max_steps)
        ckpt = root / "stage2"
        args = DPOConfig(
            **trainer_args(stage2, ckpt, steps, device, checkpoint_dir is not None),
            max_length=settings.max_length,
            precompute_ref_log_probs=True,
        )
        fresh_lora = None if stage1["adapter"] else settings.peft_config()
        curve = Curve(on_log)
        trainer = _redi_trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pair_rows]),
            processing_class=tokenizer,
            peft_config=fresh_lora,
            alpha=settings.redi_alpha,
        )
        per_epoch = sum(
            len(c) + len(r)
            for c, r in zip(trainer.train_dataset["chosen_ids"], trainer.train_dataset["rejected_ids"], strict=True)
        )
        output, resumed, seconds, adapter = fit(trainer, curve, ckpt, tokenizer, out_dir, settings.lora)
    negative = [p["redi/negative_term"] for p in curve.points if "redi/negative_term" in p]
    return TrainResult(
        model_dir=out_dir,
        method="redi",
        steps=stage1["steps"] + int(output.global_step),
        train_loss=float(output.training_loss),
        eval_loss=None,
        tokens_trained=stage1["tokens"] + int(per_epoch * output.global_step / max(1, steps) * stage2.epochs),
        tokens_generated=0,
        examples=len(train_rows) + len(pair_rows),
        seconds=stage1["seconds"] + seconds,
        resumed_from_step=resumed,
        adapter=adapter,
        curve=curve.points,
        extra={
            "stage1_loss": stage1["loss"],
            "stage1_steps": stage1["steps"],
            "pairs": len(pair_rows),
            **({"negative_term_last": negative[-1]} if negative else {}),
        },
    )
