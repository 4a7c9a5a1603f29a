"""GRPO with the task's verifier as the reward: TRL's GRPOTrainer, several samples per prompt.

    reward(x, y) = 1[verifier accepts y against x's reference answer]  (+ w * 1[y has a final answer])

Each prompt gets `num_generations` samples; advantages are the rewards normalised within the group, so
only prompts where some samples pass and some fail teach anything.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from flywheel_dagster.engines.transformers_engine import pick_device
from flywheel_dagster.tasks.base import TaskSource
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


def correctness_reward(task: TaskSource) -> Callable[..., list[float]]:
    """A TRL reward function: 1.0 where the task's verifier accepts the completion, else 0.0."""

    def correctness(completions: list[str], reference: list[str], **kwargs) -> list[float]:  # noqa: ANN003
        return [1.0 if task.verify(c, ref).correct else 0.0 for c, ref in zip(completions, reference, strict=True)]

    return correctness


def format_reward(task: TaskSource) -> Callable[..., list[float]]:
    """A TRL reward function: 1.0 where the completion states a final answer the task can parse."""

    def has_final_answer(completions: list[str], **kwargs) -> list[float]:  # noqa: ANN003
        return [1.0 if task.parse(c).answer is not None else 0.0 for c in completions]

    return has_final_answer


def run_grpo(
    base_model_dir: str | Path,
    prompt_rows: list[dict[str, str]],
    task: TaskSource,
    out_dir: str | Path,
    settings: TrainSettings,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """GRPO on `prompt_rows` ({"prompt", "reference"}) with the task verifier as the reward."""
    from trl import GRPOConfig, GRPOTrainer

    check_rows(prompt_rows, ("prompt", "reference"), "grpo prompts")
    quiet()
    out_dir = Path(out_dir)
    device = pick_device(settings.device)
    model, tokenizer = load_policy(base_model_dir, device)
    batch, steps = on_policy_batch(settings, len(prompt_rows))
    holder: dict[str, object] = {}
    correctness = correctness_reward(task)

    def counted_correctness(completions, completion_ids, **kwargs):  # noqa: ANN001, ANN003, ANN202
        holder["trainer"].tokens_generated += sum(len(ids) for ids in completion_ids)
        return correctness(completions, **kwargs)

    counted_correctness.__name__ = "correctness"
    rewards: list[Callable[..., list[float]]] = [counted_correctness]
    weights = [1.0]
    if settings.grpo_format_reward > 0:
        rewards.append(format_reward(task))
        weights.append(settings.grpo_format_reward)
    curve = Curve(on_log)

    class _GRPO(GRPOTrainer):
        tokens_generated = 0
        tokens_trained = 0

    with tempfile.TemporaryDirectory(prefix="flywheel-grpo-") as scratch:
        ckpt = Path(checkpoint_dir) if checkpoint_dir else Path(scratch)
        args = GRPOConfig(
            **{
                **trainer_args(settings, ckpt, steps, device, checkpoint_dir is not None),
                "per_device_train_batch_size": batch,
            },
            num_generations=settings.num_generations,
            max_completion_length=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=0,
            beta=settings.grpo_beta,
            reward_weights=weights,
            use_vllm=False,
            log_completions=False,
        )
        trainer = _GRPO(
            model=model,
            reward_funcs=rewards,
            args=args,
            train_dataset=dataset([{"prompt": r["prompt"], "reference": r["reference"]} for r in prompt_rows]),
            processing_class=tokenizer,
            peft_config=settings.peft_config(),
        )
        holder["trainer"] = trainer
        output, resumed, seconds, adapter = fit(trainer, curve, ckpt, tokenizer, out_dir, settings.lora)
    generated = trainer.tokens_generated  # a resumed run starts from the count saved with its checkpoint
    rewards_logged = [p["reward"] for p in curve.points if "reward" in p]
    return TrainResult(
        model_dir=out_dir,
        method="grpo",
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        eval_loss=None,
        # The policy-gradient loss covers every sampled token, once per iteration over a generation batch.
        tokens_trained=generated * args.num_iterations,
        tokens_generated=generated,
        examples=len(prompt_rows),
        seconds=seconds,
        resumed_from_step=resumed,
        adapter=adapter,
        curve=curve.points,
        extra={"reward_first": rewards_logged[0], "reward_last": rewards_logged[-1]} if rewards_logged else {},
    )
