"""What every distillation method shares: settings, the result, LoRA, checkpoints, curves and token counts.

Each method (`sft`, `redi`, `opsd`, `grpo`) is a TRL trainer plus a loss or a reward; the plumbing here is
the same for all of them, so a method file reads as its objective and little else.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("sft", "redi", "opsd", "grpo")
FINAL_MARKER = "flywheel_train_result.json"


@dataclass(frozen=True)
class LoraSettings:
    """A PEFT LoRA adapter instead of full fine-tuning; `registered_as` says how the candidate is stored."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    registered_as: str = "merged"  # "merged": full weights; "adapter": the adapter, on top of its parent version

    def peft_config(self):  # noqa: ANN201 - peft.LoraConfig
        from peft import LoraConfig

        modules = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=modules, task_type="CAUSAL_LM"
        )


@dataclass(frozen=True)
class TrainSettings:
    """One training run. Fields after `lora` are read by the methods that use them."""

    method: str
    learning_rate: float
    epochs: float
    batch_size: int
    max_length: int
    max_steps: int = -1
    seed: int = 0
    warmup_ratio: float = 0.05
    device: str = "auto"
    checkpoint_every: int = 50
    lora: LoraSettings | None = None
    # redi: stage 2 on (positive, negative) pairs
    redi_alpha: float = 0.8
    redi_learning_rate: float = 1e-5
    redi_epochs: float = 1.0
    # opsd and grpo: on-policy sampling
    num_generations: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    opsd_clip: float = 0.05
    grpo_beta: float = 0.0
    grpo_format_reward: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"training method {self.method!r}: expected one of {list(METHODS)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def peft_config(self):  # noqa: ANN201 - peft.LoraConfig | None
        """The LoRA config for a TRL trainer's `peft_config`, or None for full fine-tuning."""
        return self.lora.peft_config() if self.lora else None


@dataclass
class TrainResult:
    model_dir: Path
    method: str
    steps: int
    train_loss: float
    eval_loss: float | None
    tokens_trained: int
    tokens_generated: int
    examples: int
    seconds: float
    resumed_from_step: int = 0
    adapter: bool = False
    curve: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model_dir"] = str(self.model_dir)
        out.pop("curve")
        return out


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-able parts: names a checkpoint folder for one exact training job."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset(rows: list[dict[str, Any]]):  # noqa: ANN201 - datasets.Dataset
    """A Dataset whose fingerprint is the hash of its rows (no pickling of the table to fingerprint it)."""
    import pyarrow as pa
    from datasets import Dataset

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Dataset(pa.Table.from_pylist(rows), fingerprint=digest)


def quiet() -> None:
    """No progress bars, and no deprecation chatter from the libraries' own configs in the job's output."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    warnings.filterwarnings("ignore", message=r".*trl\.experimental.*")

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def load_policy(model_dir: str | Path, device: str):  # noqa: ANN201 - (model, tokenizer)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer


def total_steps(n_examples: int, batch_size: int, epochs: float, max_steps: int) -> int:
    return max_steps if max_steps > 0 else max(1, math.ceil(math.ceil(n_examples / batch_size) * epochs))


def trainer_args(
    settings: TrainSettings, out_dir: Path, steps: int, device: str, checkpoints: bool = True
) -> dict[str, Any]:
    """The TrainingArguments every method shares: schedule, checkpoints every N steps (unless `checkpoints`
    is off: a run without a checkpoint folder), CPU/GPU, no reporting."""
    return {
        "output_dir": str(out_dir),
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps,
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": settings.batch_size,
        "lr_scheduler_type": "cosine",
        # No warmup below 20 steps: a one-step run must not spend its only step at learning rate 0.
        "warmup_steps": int(settings.warmup_ratio * steps),
        "logging_steps": max(1, steps // 25),
        "save_strategy": "steps" if checkpoints else "no",
        "save_steps": max(1, settings.checkpoint_every),
        "save_total_limit": 2,
        "save_only_model": False,
        "report_to": "none",
        "seed": settings.seed,
        "data_seed": settings.seed,
        "use_cpu": device == "cpu",
        "bf16": device == "cuda",
        # TRL turns gradient checkpointing on by default: it saves GPU memory on large models by recomputing
        # each layer's forward pass in the backward one. On the CPU it only costs time (the playground base
        # trains in 330 s without it against 423 with it, to the same weights: no dropout, so the recompute
        # is exact).
        "gradient_checkpointing": device == "cuda",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


class Curve:
    """Collects logged points (loss, learning rate, method terms) and forwards each to `on_log`."""

    def __init__(self, on_log: Callable[[int, dict[str, float]], None] | None) -> None:
        self.points: list[dict[str, float]] = []
        self.on_log = on_log

    def callback(self):  # noqa: ANN201 - transformers.TrainerCallback
        from transformers import TrainerCallback

        curve = self

        class _Curve(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003
                if not logs:
                    return
                point = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and math.isfinite(v)}
                point["step"] = float(state.global_step)
                curve.points.append(point)
                if curve.on_log is not None:
                    curve.on_log(state.global_step, point)

        return _Curve()


def prepare(trainer, curve: Curve) -> None:  # noqa: ANN001 - a transformers Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(curve.callback())


def last_checkpoint(folder: Path) -> tuple[str | None, int]:
    """The newest complete `checkpoint-N` folder under `folder` and its step, or (None, 0)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None, 0
    found = get_last_checkpoint(str(folder))
    if found is None:
        return None, 0
    state = Path(found) / "trainer_state.json"
    if not state.exists():  # killed while writing: the one before it is whole
        return None, 0
    return found, int(json.loads(state.read_text())["global_step"])


COUNTERS = ("tokens_generated", "tokens_trained")
COUNTERS_FILE = "flywheel_tokens.json"


def _counter_callback(trainer):  # noqa: ANN001, ANN202 - a TrainerCallback
    from transformers import TrainerCallback

    class _Counters(TrainerCallback):
        """Token counters saved with each checkpoint, so a resumed run reports the whole run's tokens."""

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            counts = {k: getattr(trainer, k, 0) for k in COUNTERS}
            if folder.is_dir():
                (folder / COUNTERS_FILE).write_text(json.dumps(counts))

    return _Counters()


def train_with_resume(trainer, checkpoint_dir: Path) -> tuple[Any, int]:  # noqa: ANN001
    """trainer.train(), resumed from the last checkpoint in `checkpoint_dir` when one is there.

    Returns the train output and the step it resumed from (0: a fresh start).
    """
    trainer.add_callback(_counter_callback(trainer))
    resume, step = last_checkpoint(checkpoint_dir)
    if resume is not None and (Path(resume) / COUNTERS_FILE).exists():
        for k, v in json.loads((Path(resume) / COUNTERS_FILE).read_text()).items():
            setattr(trainer, k, v)
    return trainer.train(resume_from_checkpoint=resume), step


def on_policy_batch(settings: TrainSettings, prompts: int) -> tuple[int, int]:
    """(samples per step, total steps) for a method sampling `num_generations` completions per prompt."""
    batch = max(settings.num_generations, settings.batch_size - settings.batch_size % settings.num_generations)
    return batch, total_steps(prompts * settings.num_generations, batch, settings.epochs, settings.max_steps)


def fit(trainer, curve: Curve, checkpoint_dir: Path, tokenizer, out_dir: Path, lora: LoraSettings | None):  # noqa: ANN001, ANN201
    """Train (resuming from `checkpoint_dir` when it holds a checkpoint) and save the policy to `out_dir`.

    Returns (train output, step resumed from, seconds, whether an adapter was saved).
    """
    prepare(trainer, curve)
    started = time.perf_counter()
    output, resumed = train_with_resume(trainer, checkpoint_dir)
    seconds = time.perf_counter() - started
    return output, resumed, seconds, save_model(trainer.model, tokenizer, out_dir, lora)


def save_model(model, tokenizer, out_dir: Path, lora: LoraSettings | None) -> bool:  # noqa: ANN001
    """Save the trained policy: full weights, or (LoRA) the merged weights or the adapter alone.

    Returns True when what was saved is an adapter.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = False
    if lora is not None and hasattr(model, "merge_and_unload"):
        if lora.registered_as == "adapter":
            model.save_pretrained(out_dir, selected_adapters=["default"])
            adapter = True
        else:
            model = model.merge_and_unload()
    if not adapter:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return adapter
