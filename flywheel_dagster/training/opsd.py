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

import functools
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from flywheel_dagster.training import trl_hooks
from flywheel_dagster.training.common import MethodTerms, TrainingRun, check_rows, dataset
from flywheel_dagster.training.settings import OnLog, TrainResult, TrainSettings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel
    from trl.experimental.sdft import SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DistillationLogits


def forward_kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """D_t = KL(teacher || student) over the vocabulary for each token, (B, T); the teacher gets no gradient."""
    student_lp = student_logits.float().log_softmax(dim=-1)
    teacher_lp = teacher_logits.detach().float().log_softmax(dim=-1)
    return (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)


def capped_mean(per_token: torch.Tensor, mask: torch.Tensor, clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss from per-token KLs (B, T): each capped at `clip` (None: no cap), averaged over each sequence's
    tokens, then over sequences. Returns (loss, uncapped mean KL per token)."""
    if clip is not None:
        scale = (clip / per_token.detach().clamp(min=1e-12)).clamp(max=1.0)
        capped = per_token * scale
    else:
        capped = per_token
    mask = mask.to(capped.dtype)
    loss = ((capped * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    kl = (per_token.detach() * mask).sum() / mask.sum().clamp(min=1)
    return loss, kl


def clipped_forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token forward KL(teacher || student), each token's value capped at `clip` (None: no cap).

    Logits are (B, T, V), the mask (B, T). The teacher gets no gradient. Returns (loss, uncapped mean KL per
    token): the loss averages over each sequence's tokens, then over sequences.
    """
    return capped_mean(forward_kl_per_token(student_logits, teacher_logits), mask, clip)


def kl_profile(per_token: torch.Tensor, mask: torch.Tensor, clip: float | None) -> dict[str, float]:
    """How the per-token KL(teacher || student) is spread over the student's tokens, and what the cap does.

    Returns its median, 90th percentile and maximum, the share of tokens over the cap and the share of the
    KL mass the cap removes (what the uncapped loss would have counted and the capped one does not).
    """
    values = per_token.detach().float()[mask.bool()]
    if values.numel() == 0:
        return {}
    over = values > clip if clip is not None else values < 0
    removed = (values - clip).clamp(min=0).sum() if clip is not None else values.new_zeros(())
    return {
        "kl_p50": float(values.quantile(0.5)),
        "kl_p90": float(values.quantile(0.9)),
        "kl_max": float(values.max()),
        "capped_share": float(over.float().mean()),
        "kl_removed_share": float(removed / values.sum().clamp(min=1e-12)),
    }


def _import_sdft() -> ModuleType:
    """trl.experimental.sdft, without TRL's warning that it is experimental."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl.experimental.sdft as sdft

    return sdft


@functools.cache
def _opsd_trainer_class() -> type[SDFTTrainer]:
    """OPSDTrainer(SDFTTrainer), built on first use (TRL is imported here, not with the module)."""
    sdft = _import_sdft()
    trl_hooks.require(sdft.SDFTTrainer)

    class OPSDTrainer(MethodTerms, sdft.SDFTTrainer):
        """SDFTTrainer with the clipped forward KL; counts the tokens it generates and trains on."""

        def __init__(self, *args: Any, clip: float | None, **kwargs: Any) -> None:
            self.opsd_clip = clip
            self.tokens_generated = 0
            self.tokens_trained = 0
            super().__init__(*args, **kwargs)

        def sample_rollouts(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().sample_rollouts(inputs)
            if self.model.training:
                self.tokens_generated += int(batch["raw_completion_lengths"].sum())
            return batch

        def _compute_self_distillation_loss(
            self, model: PreTrainedModel, inputs: dict[str, Any], distillation_logits: DistillationLogits
        ) -> torch.Tensor:
            mask = distillation_logits.loss_mask
            per_token = forward_kl_per_token(distillation_logits.student_logits, distillation_logits.teacher_logits)
            loss, kl = capped_mean(per_token, mask, self.opsd_clip)
            self.record(model.training, "opsd/kl", float(kl))
            self.record(model.training, "opsd/clipped_loss", float(loss.detach()))
            if model.training:
                self.tokens_trained += int(mask.sum())
                for name, value in kl_profile(per_token, mask, self.opsd_clip).items():
                    self.record(True, f"opsd/{name}", value)
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
    on_log: OnLog | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Self-distil on `prompt_rows` ({"prompt", "solution"}); the teacher sees `teacher_template` filled in.

    The template (the task's) has `{prompt}` and `{privileged_context}` (the solution) placeholders. Each
    optimizer step samples `num_generations` completions for `batch_size / num_generations` prompts.
    """
    sdft = _import_sdft()
    check_rows(prompt_rows, ("prompt", "solution"), "opsd prompts")
    for key in ("{prompt}", "{privileged_context}"):
        if key not in teacher_template:
            raise ValueError(f"opsd teacher_template {teacher_template!r}: expected a {key} placeholder")
    with TrainingRun("opsd", base_model_dir, out_dir, settings, on_log, checkpoint_dir) as run:
        model, tokenizer = run.load_policy()
        args = sdft.SDFTConfig(
            **run.on_policy_args(len(prompt_rows)),
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
            clip=settings.opsd.clip,
        )
        fitted = run.fit(trainer, tokenizer)
    return run.result(
        fitted,
        tokens_trained=trainer.tokens_trained,
        tokens_generated=trainer.tokens_generated,
        examples=len(prompt_rows),
        extra=run.curve.ends("opsd/kl", "kl"),
    )
