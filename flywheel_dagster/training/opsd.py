"""OPSD, on-policy self-distillation (arXiv 2601.18734): the model teaches itself, shown the answer.

The student (the model, prompt x only) samples its own completion y. The teacher is the same model with the
reference solution s in its prompt (privileged information) and no gradient; with LoRA it is the frozen base
(the adapter disabled). On the student's tokens the loss is the forward KL over the vocabulary, each token's
term capped so that the few tokens where the two prompts disagree most (style, not reasoning; token-level
divergence is heavy-tailed) do not carry the update:

    D_t = sum_v p_T(v | s, x, y_<t) * (log p_T(v | s, x, y_<t) - log p_S(v | x, y_<t))
    L   = mean_t  D_t * min(1, clip / sg(D_t))          (sg: stop-gradient; clip = 0.05 as in the paper's code)

A capped token counts `clip` towards the loss and its gradient keeps its direction, scaled down by clip/D_t.
(Clipping each vocabulary entry's term instead, or clamping D_t so that its gradient vanishes, are the
alternatives; the first pushes down the very tokens the teacher is sure of: see docs/distill.md.)
Built on TRL's experimental SDFTTrainer (student rollouts, teacher prompts from a privileged context, the
frozen teacher); this module replaces its divergence by the capped one.
"""

from __future__ import annotations

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
    load_policy,
    on_policy_batch,
    quiet,
    trainer_args,
)
from flywheel_dagster.training.sft import check_rows


def clipped_forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token forward KL(teacher || student), each token's value capped at `clip` (None: no cap).

    Logits are (B, T, V), the mask (B, T). The teacher gets no gradient. Returns (loss, uncapped mean KL per
    token): the loss averages over each sequence's tokens, then over sequences.
    """
    student_lp = torch.log_softmax(student_logits.float(), dim=-1)
    teacher_lp = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    per_token = (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)
    if clip is not None:
        scale = (clip / per_token.detach().clamp(min=1e-12)).clamp(max=1.0)
        capped = per_token * scale
    else:
        capped = per_token
    mask = mask.to(capped.dtype)
    loss = ((capped * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    kl = (per_token.detach() * mask).sum() / mask.sum().clamp(min=1)
    return loss, kl


def _opsd_trainer_class():  # noqa: ANN202 - an SDFTTrainer subclass (TRL imported lazily)
    from trl.experimental.sdft import SDFTTrainer

    class OPSDTrainer(SDFTTrainer):
        """SDFTTrainer with the clipped forward KL; counts the tokens it generates and trains on."""

        def __init__(self, *args, clip: float | None, **kwargs) -> None:  # noqa: ANN002, ANN003
            self.opsd_clip = clip
            self.tokens_generated = 0
            self.tokens_trained = 0
            super().__init__(*args, **kwargs)

        def _prepare_training_batch(self, inputs):  # noqa: ANN001, ANN202
            batch = super()._prepare_training_batch(inputs)
            if self.model.training:
                self.tokens_generated += int(batch["raw_completion_lengths"].sum())
            return batch

        def _compute_self_distillation_loss(self, model, inputs, distillation_logits):  # noqa: ANN001, ANN202
            mask = distillation_logits.loss_mask
            loss, kl = clipped_forward_kl(
                distillation_logits.student_logits, distillation_logits.teacher_logits, mask, self.opsd_clip
            )
            mode = "train" if model.training else "eval"
            if model.training:
                self.tokens_trained += int(mask.sum())
            self._metrics[mode]["opsd/kl"].append(float(kl))
            self._metrics[mode]["opsd/clipped_loss"].append(float(loss.detach()))
            return loss

    return OPSDTrainer


def teacher_prompt(template: str, prompt: str, solution: str) -> str:
    """The teacher's prompt: the task's template with the student's prompt and the reference solution."""
    return template.format(prompt=prompt, privileged_context=solution)


def run_opsd(
    base_model_dir: str | Path,
    prompt_rows: list[dict[str, str]],
    teacher_template: str,
    out_dir: str | Path,
    settings: TrainSettings,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Self-distil on `prompt_rows` ({"prompt", "solution"}); the teacher sees `teacher_template` filled in.

    The template (the task's) has `{prompt}` and `{privileged_context}` (the solution) placeholders. Each
    optimizer step samples `num_generations` completions for `batch_size / num_generations` prompts.
    """
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.sdft import SDFTConfig

    check_rows(prompt_rows, ("prompt", "solution"), "opsd prompts")
    for key in ("{prompt}", "{privileged_context}"):
        if key not in teacher_template:
            raise ValueError(f"opsd teacher_template {teacher_template!r}: expected a {key} placeholder")
    quiet()
    out_dir = Path(out_dir)
    device = pick_device(settings.device)
    model, tokenizer = load_policy(base_model_dir, device)
    batch, steps = on_policy_batch(settings, len(prompt_rows))
    curve = Curve(on_log)
    with tempfile.TemporaryDirectory(prefix="flywheel-opsd-") as scratch:
        ckpt = Path(checkpoint_dir) if checkpoint_dir else Path(scratch)
        args = SDFTConfig(
            **{
                **trainer_args(settings, ckpt, steps, device, checkpoint_dir is not None),
                "per_device_train_batch_size": batch,
            },
            num_generations=settings.num_generations,
            max_completion_length=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=0,
            teacher_model_kind="base",
            distillation_mode="full_logits",
            distillation_alpha=0.0,  # forward KL(teacher || student); the clip is ours
            distillation_is_clip=None,
            generate_from_teacher=False,
            teacher_prompt_template=teacher_template,
        )
        trainer = _opsd_trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset([{"prompt": r["prompt"], "privileged_context": r["solution"]} for r in prompt_rows]),
            processing_class=tokenizer,
            peft_config=settings.peft_config(),
            clip=settings.opsd_clip,
        )
        output, resumed, seconds, adapter = fit(trainer, curve, ckpt, tokenizer, out_dir, settings.lora)
    kls = [p["opsd/kl"] for p in curve.points if "opsd/kl" in p]
    return TrainResult(
        model_dir=out_dir,
        method="opsd",
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        eval_loss=None,
        tokens_trained=trainer.tokens_trained,
        tokens_generated=trainer.tokens_generated,
        examples=len(prompt_rows),
        seconds=seconds,
        resumed_from_step=resumed,
        adapter=adapter,
        curve=curve.points,
        extra={"kl_first": kls[0], "kl_last": kls[-1]} if kls else {},
    )
