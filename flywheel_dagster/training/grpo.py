"""GRPO with the task's verifier as the reward: TRL's GRPOTrainer, several samples per prompt.

    reward(x, y) = 1[verifier accepts y against x's reference answer]  (+ w * 1[y has a final answer])

Each prompt gets `num_generations` samples; advantages are the rewards normalised within the group, so
only prompts where some samples pass and some fail teach anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel_dagster.tasks.base import TaskSource
from flywheel_dagster.training.common import TrainingRun, check_rows, dataset
from flywheel_dagster.training.settings import OnLog, TrainResult, TrainSettings

if TYPE_CHECKING:
    from trl import GRPOTrainer

Reward = Callable[..., list[float]]


def correctness_reward(task: TaskSource) -> Reward:
    """A TRL reward function: 1.0 where the task's verifier accepts the completion, else 0.0."""

    def correctness(completions: list[str], reference: list[str], **kwargs: Any) -> list[float]:
        return [1.0 if task.verify(c, ref).correct else 0.0 for c, ref in zip(completions, reference, strict=True)]

    return correctness


def format_reward(task: TaskSource) -> Reward:
    """A TRL reward function: 1.0 where the completion states a final answer the task can parse."""

    def has_final_answer(completions: list[str], **kwargs: Any) -> list[float]:
        return [1.0 if task.parse(c).answer is not None else 0.0 for c in completions]

    return has_final_answer


@functools.cache
def _grpo_trainer_class() -> type[GRPOTrainer]:
    """CountingGRPOTrainer(GRPOTrainer), built on first use (TRL is imported here, not with the module)."""
    from trl import GRPOTrainer

    class CountingGRPOTrainer(GRPOTrainer):
        """GRPOTrainer counting the tokens it samples, through its first reward function (which TRL calls on
        every generated batch, with the completions' token ids)."""

        def __init__(self, *args: Any, reward_funcs: list[Reward], **kwargs: Any) -> None:
            self.tokens_generated = 0
            self.tokens_trained = 0
            first, *rest = reward_funcs

            def counted(completions: list[str], completion_ids: list[list[int]], **kw: Any) -> list[float]:
                self.tokens_generated += sum(len(ids) for ids in completion_ids)
                return first(completions, **kw)

            counted.__name__ = first.__name__  # TRL names the reward's curve after it
            super().__init__(*args, reward_funcs=[counted, *rest], **kwargs)

    return CountingGRPOTrainer


def run_grpo(
    base_model_dir: str | Path,
    prompt_rows: list[dict[str, str]],
    task: TaskSource,
    out_dir: str | Path,
    settings: TrainSettings,
    on_log: OnLog | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """GRPO on `prompt_rows` ({"prompt", "reference"}) with the task verifier as the reward."""
    from trl import GRPOConfig

    check_rows(prompt_rows, ("prompt", "reference"), "grpo prompts")
    rewards, weights = [correctness_reward(task)], [1.0]
    if settings.grpo.format_reward > 0:
        rewards.append(format_reward(task))
        weights.append(settings.grpo.format_reward)
    with TrainingRun("grpo", base_model_dir, out_dir, settings, on_log, checkpoint_dir) as run:
        model, tokenizer = run.load_policy()
        args = GRPOConfig(
            **run.on_policy_args(len(prompt_rows)),
            beta=settings.grpo.beta,
            reward_weights=weights,
            use_vllm=False,
            log_completions=False,
        )
        trainer = _grpo_trainer_class()(
            model=model,
            reward_funcs=rewards,
            args=args,
            train_dataset=dataset([{"prompt": r["prompt"], "reference": r["reference"]} for r in prompt_rows]),
            processing_class=tokenizer,
            peft_config=settings.peft_config(),
        )
        fitted = run.fit(trainer, tokenizer)
    generated = trainer.tokens_generated  # a resumed run starts from the count saved with its checkpoint
    return run.result(
        fitted,
        # The policy-gradient loss covers every sampled token, once per iteration over a generation batch.
        tokens_trained=generated * args.num_iterations,
        tokens_generated=generated,
        examples=len(prompt_rows),
        extra=run.curve.ends("reward", "reward"),
    )
