"""What every distillation method shares: the run around a trainer (`TrainingRun`): model loading, LoRA,
checkpoints and resume, curves, token counts and the result. The settings and the result type are in
settings.py.

Each method (`sft`, `redi`, `opsd`, `grpo`) is a TRL trainer subclass plus a loss or a reward; a method file
holds those and a short `run_*` saying what is specific to it. Nothing here imports torch, transformers or
TRL at module level: the code location imports the training package without them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from flywheel_dagster.engines.transformers_engine import pick_device
from flywheel_dagster.training.settings import LoraSettings, OnLog, TrainResult, TrainSettings

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import (
        PreTrainedModel,
        PreTrainedTokenizerBase,
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
    from transformers.trainer_utils import TrainOutput


def check_rows(rows: list[dict[str, str]], keys: tuple[str, ...], what: str) -> None:
    if not rows:
        raise ValueError(f"{what} is empty; expected at least one row with {list(keys)}")
    for i, row in enumerate(rows[:5]):
        if not set(keys) <= row.keys():
            raise ValueError(f"{what}: row {i} has keys {sorted(row)}; expected {list(keys)}")


def dataset(rows: list[dict[str, Any]]) -> Dataset:
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


def load_policy(
    model_dir: str | Path, adapter_base: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer saved in `model_dir`, in float32. With `adapter_base`, `model_dir` holds a LoRA
    adapter: it is loaded, trainable, onto the model in `adapter_base`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter_base is None:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tokenizer
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(adapter_base, dtype=torch.float32)
    return PeftModel.from_pretrained(base, model_dir, is_trainable=True), tokenizer


def world_size() -> int:
    """The processes training together: torchrun's WORLD_SIZE (1 for a job run on its own)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0: the one process of a distributed job that saves the model, writes the result and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def per_process(batch: int, what: str = "training.batch_size") -> int:
    """A global batch's share per process; it must divide evenly (the optimizer step sees the same batch)."""
    world = world_size()
    if batch % world:
        raise ValueError(f"{what} {batch} does not divide among {world} training processes")
    return batch // world


def distributed_args(settings: TrainSettings, device: str) -> dict[str, Any]:
    """TrainingArguments for a job of several processes: the collective backend, and FSDP when asked."""
    if world_size() == 1:
        return {}
    if device == "cuda":
        import torch

        if world_size() > (seen := torch.cuda.device_count()):  # else rank >= seen dies on "invalid device ordinal"
            raise ValueError(
                f"training.processes {world_size()} but this machine shows {seen} GPU(s): each process trains on a "
                f"GPU of its own; set training.processes (and, on Kubernetes, training.gpus) to at most {seen}"
            )
    args: dict[str, Any] = {"ddp_backend": "gloo" if device == "cpu" else "nccl"}
    if settings.sharding == "fsdp":
        if settings.lora is not None:
            raise ValueError("training.sharding fsdp with training.lora: shard full fine-tuning only (LoRA fits DDP)")
        args |= {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True}}
    return args


def total_steps(n_examples: int, batch_size: int, epochs: float, max_steps: int) -> int:
    return max_steps if max_steps > 0 else max(1, math.ceil(math.ceil(n_examples / batch_size) * epochs))


def trainer_args(
    settings: TrainSettings, out_dir: Path, steps: int, device: str, checkpoints: bool = True
) -> dict[str, Any]:
    """The TrainingArguments every method shares: schedule, checkpoints every N steps (unless `checkpoints`
    is off: a run without a checkpoint folder), CPU/GPU, no reporting. `settings.batch_size` is the global
    batch: each of a distributed job's processes takes its share."""
    return {
        **distributed_args(settings, device),
        "output_dir": str(out_dir),
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps,
        "per_device_train_batch_size": per_process(settings.batch_size),
        "per_device_eval_batch_size": per_process(settings.batch_size),
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

    def __init__(self, on_log: OnLog | None) -> None:
        self.points: list[dict[str, float]] = []
        self.on_log = on_log

    def series(self, key: str) -> list[float]:
        """The logged values of `key`, in order."""
        return [p[key] for p in self.points if key in p]

    def ends(self, key: str, name: str) -> dict[str, float]:
        """`{name}_first` and `{name}_last`: the first and last logged values of `key` (none logged: {})."""
        values = self.series(key)
        return {f"{name}_first": values[0], f"{name}_last": values[-1]} if values else {}

    def callback(self) -> TrainerCallback:
        from transformers import TrainerCallback

        curve = self

        class _Curve(TrainerCallback):
            def on_log(
                self,
                args: TrainingArguments,
                state: TrainerState,
                control: TrainerControl,
                logs: dict[str, Any] | None = None,
                **kwargs: Any,
            ) -> None:
                if not logs:
                    return
                point = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and math.isfinite(v)}
                point["step"] = float(state.global_step)
                curve.points.append(point)
                if curve.on_log is not None:
                    curve.on_log(state.global_step, point)

        return _Curve()


class MethodTerms:
    """A trainer mixin for the method's own terms (`redi/negative_term`, `opsd/kl`, ...): `record` them per
    step; each logged point carries their means since the last one (`eval_`-prefixed in evaluation), through
    the public `Trainer.log`. Put it before the TRL trainer in the bases."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._method_terms: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}
        super().__init__(*args, **kwargs)

    def record(self, training: bool, name: str, value: float) -> None:
        self._method_terms["train" if training else "eval"].setdefault(name, []).append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        terms = self._method_terms[mode]
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{k}": sum(v) / len(v) for k, v in terms.items() if v})
        terms.clear()
        super().log(logs, start_time)


def prepare(trainer: Trainer, curve: Curve) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(curve.callback())


def last_checkpoint(folder: Path) -> tuple[str | None, int]:
    """The newest complete `checkpoint-N` folder under `folder` and its step, or (None, 0).

    The Trainer writes a checkpoint's trainer_state.json after its weights, optimizer and RNG states, so a
    folder without a whole one was being written when the job was killed: the one before it is taken (its
    files are overwritten when training reaches that step again)."""
    if not folder.is_dir():
        return None, 0
    steps = sorted(
        (int(m.group(1)), path)
        for path in folder.iterdir()
        if (m := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()
    )
    for _, path in reversed(steps):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
            return str(path), int(state["global_step"])
        except (OSError, ValueError, KeyError, TypeError):  # absent, or cut short by the kill
            continue
    return None, 0


COUNTERS = ("tokens_generated", "tokens_trained")
COUNTERS_FILE = "flywheel_tokens.json"


def _counter_callback(trainer: Trainer) -> TrainerCallback:
    from transformers import TrainerCallback

    class _Counters(TrainerCallback):
        """Token counters saved with each checkpoint, so a resumed run reports the whole run's tokens."""

        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            counts = summed_over_processes({k: getattr(trainer, k, 0) for k in COUNTERS})  # every rank calls it
            if folder.is_dir() and is_main_process():
                (folder / COUNTERS_FILE).write_text(json.dumps(counts))

    return _Counters()


def train_with_resume(trainer: Trainer, checkpoint_dir: Path) -> tuple[TrainOutput, int]:
    """trainer.train(), resumed from the last checkpoint in `checkpoint_dir` when one is there.

    The trainer's token counters (`COUNTERS`) are saved with each checkpoint and restored from the one
    resumed from. Returns the train output and the step it resumed from (0: a fresh start).
    """
    trainer.add_callback(_counter_callback(trainer))
    resume, step = last_checkpoint(checkpoint_dir)
    if resume is not None and (Path(resume) / COUNTERS_FILE).exists() and is_main_process():
        # The saved counts are the whole job's; rank 0 carries them on, the other ranks count from 0.
        for k, v in json.loads((Path(resume) / COUNTERS_FILE).read_text()).items():
            setattr(trainer, k, v)
    finished = _finished_run(trainer, resume)
    output = finished if finished is not None else trainer.train(resume_from_checkpoint=resume)
    for k, v in summed_over_processes({k: getattr(trainer, k, 0) for k in COUNTERS}).items():
        if hasattr(trainer, k):
            setattr(trainer, k, v)  # each process counted its own share of the tokens
    return output, step


def _finished_run(trainer: Trainer, resume: str | None) -> TrainOutput | None:
    """The run's output when the checkpoint resumed from is its last one (killed after the final checkpoint,
    before the result was written): the checkpoint's weights, no further step. transformers' train() resumed
    there runs one more optimizer step (measured: 25 steps of a 24-step run), which would change the model
    a crash-free run produces."""
    if resume is None or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return None  # sharded checkpoints load after the model is prepared: train() does it
    from transformers.trainer_utils import TrainOutput

    state = json.loads((Path(resume) / "trainer_state.json").read_text())
    if not 0 < state.get("max_steps", 0) <= state["global_step"]:
        return None
    # Trainer's own checkpoint loading (what train(resume_from_checkpoint=...) does first, FSDP and DeepSpeed
    # aside): full weights or the PEFT adapter, onto the model in memory.
    trainer._load_from_checkpoint(resume)  # noqa: SLF001 - no public way to load a checkpoint without training
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    return TrainOutput(state["global_step"], sum(losses) / len(losses) if losses else float("nan"), {})


def summed_over_processes(counts: dict[str, int]) -> dict[str, int]:
    """`counts` summed over a distributed job's processes (a collective: every rank must call it)."""
    if world_size() == 1:
        return counts
    import torch
    import torch.distributed as dist

    values = torch.tensor([counts[k] for k in counts], dtype=torch.float64)
    dist.all_reduce(values)
    return {k: int(v) for k, v in zip(counts, values.tolist(), strict=True)}


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, lora: LoraSettings | None
) -> bool:
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


@dataclass(frozen=True)
class Fitted:
    """What `TrainingRun.fit` did: optimizer steps, mean training loss, the step resumed from, wall time."""

    steps: int
    train_loss: float
    resumed_from_step: int
    seconds: float
    adapter: bool


class TrainingRun:
    """Everything a method's run does around its trainer:

        with TrainingRun("opsd", base_model_dir, out_dir, settings, on_log, checkpoint_dir) as run:
            model, tokenizer = run.load_policy()
            trainer = OPSDTrainer(model=model, args=SDFTConfig(**run.on_policy_args(len(rows)), ...), ...)
            fitted = run.fit(trainer, tokenizer)
        return run.result(fitted, tokens_trained=..., tokens_generated=..., examples=len(rows))

    On entry: quiet libraries, the device, and the run's folder: `checkpoint_dir`, or a scratch folder
    removed on exit. The trainer checkpoints into that folder (or its `trainer_folder` subfolder) and
    resumes from the newest checkpoint there; the trained policy is saved to `out_dir`.
    """

    def __init__(
        self,
        method: str,
        base_model_dir: str | Path,
        out_dir: str | Path,
        settings: TrainSettings,
        on_log: OnLog | None = None,
        checkpoint_dir: str | Path | None = None,
        trainer_folder: str | None = None,
    ) -> None:
        self.method = method
        self.base_model_dir = Path(base_model_dir)
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.curve = Curve(on_log)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.trainer_folder = trainer_folder
        self.device = ""
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Self:
        quiet()
        self.device = pick_device(self.settings.device)
        self._scratch = tempfile.TemporaryDirectory(prefix=f"flywheel-{self.method}-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    @property
    def folder(self) -> Path:
        """The run's folder: the checkpoint folder, or (without one) a scratch folder that lives as the run."""
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        if self._scratch is None:
            raise RuntimeError("TrainingRun.folder outside its `with` block")
        return Path(self._scratch.name)

    @property
    def checkpoints(self) -> Path:
        """Where the trainer writes its `checkpoint-N` folders and resumes from."""
        return self.folder / self.trainer_folder if self.trainer_folder else self.folder

    def load_policy(
        self, model_dir: str | Path | None = None, adapter_base: str | Path | None = None
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The policy to train: the base model, or what is in `model_dir` (see `load_policy`)."""
        return load_policy(model_dir or self.base_model_dir, adapter_base)

    def trainer_args(self, steps: int) -> dict[str, Any]:
        """The shared TrainingArguments (`trainer_args`) for a run of `steps` optimizer steps."""
        return trainer_args(self.settings, self.checkpoints, steps, self.device, self.checkpoint_dir is not None)

    def on_policy_args(self, prompts: int) -> dict[str, Any]:
        """The shared arguments of an on-policy trainer (GRPOConfig, SDFTConfig) over `prompts` prompts: each
        step samples `num_generations` completions per prompt, the batch counting samples in whole groups."""
        s, op = self.settings, self.settings.on_policy
        batch = max(op.num_generations, s.batch_size - s.batch_size % op.num_generations)
        steps = total_steps(prompts * op.num_generations, batch, s.epochs, s.max_steps)
        return {
            **self.trainer_args(steps),
            "per_device_train_batch_size": per_process(batch, "the on-policy batch (whole groups of samples)"),
            "num_generations": op.num_generations,
            "max_completion_length": op.max_new_tokens,
            "temperature": op.temperature,
            "top_k": 0,
        }

    def fit(self, trainer: Trainer, tokenizer: PreTrainedTokenizerBase) -> Fitted:
        """Train (resuming from the newest checkpoint in `checkpoints`), collecting the curve; save the policy
        to `out_dir`."""
        prepare(trainer, self.curve)
        started = time.perf_counter()
        output, resumed = train_with_resume(trainer, self.checkpoints)
        seconds = time.perf_counter() - started
        if self.settings.sharding == "fsdp" and world_size() > 1:
            trainer.save_model(str(self.out_dir))  # every rank: the shards are gathered, rank 0 writes
            if is_main_process():
                tokenizer.save_pretrained(self.out_dir)
            adapter = False
        else:
            adapter = (
                save_model(trainer.model, tokenizer, self.out_dir, self.settings.lora) if is_main_process() else False
            )
        trainer.accelerator.wait_for_everyone()
        return Fitted(int(output.global_step), float(output.training_loss), resumed, seconds, adapter)

    def result(
        self,
        fitted: Fitted,
        *,
        tokens_trained: int,
        tokens_generated: int,
        examples: int,
        eval_loss: float | None = None,
        extra: dict[str, float] | None = None,
    ) -> TrainResult:
        return TrainResult(
            model_dir=self.out_dir,
            method=self.method,
            steps=fitted.steps,
            train_loss=fitted.train_loss,
            eval_loss=eval_loss,
            tokens_trained=tokens_trained,
            tokens_generated=tokens_generated,
            examples=examples,
            seconds=fitted.seconds,
            resumed_from_step=fitted.resumed_from_step,
            adapter=fitted.adapter,
            curve=self.curve.points,
            extra=extra or {},
        )
