"""A training run's settings (nested per method, as in the config's `training` section) and its result.

Plain dataclasses: the job's process, the asset that launches it and the benchmarks share them without
importing torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft import LoraConfig

METHODS = ("sft", "redi", "opsd", "grpo")

OnLog = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class LoraSettings:
    """A PEFT LoRA adapter instead of full fine-tuning; `registered_as` says how the candidate is stored."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    registered_as: str = "merged"  # "merged": full weights; "adapter": the adapter, on top of its parent version

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        modules = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=modules, task_type="CAUSAL_LM"
        )


@dataclass(frozen=True)
class RediSettings:
    """redi's stage 2 on (positive, negative) pairs (config `training.redi`)."""

    alpha: float = 0.8
    learning_rate: float = 1e-5
    epochs: float = 1.0


@dataclass(frozen=True)
class OnPolicySettings:
    """Sampling during training, for opsd and grpo (config `training.on_policy`)."""

    num_generations: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0


@dataclass(frozen=True)
class OpsdSettings:
    """opsd's cap on each token's divergence; None: no cap (config `training.opsd`)."""

    clip: float | None = 0.05


@dataclass(frozen=True)
class GrpoSettings:
    """grpo's KL penalty and format-reward weight (config `training.grpo`)."""

    beta: float = 0.0
    format_reward: float = 0.0


# The nested sections and the prefix their fields carry in `TrainSettings.as_dict()` (flat, one level).
_SECTIONS = {"redi": "redi_", "on_policy": "", "opsd": "opsd_", "grpo": "grpo_"}


@dataclass(frozen=True)
class TrainSettings:
    """One training run. The sections after `lora` are read by the methods that use them."""

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
    sharding: str = "ddp"  # with several processes: "ddp" or "fsdp"
    lora: LoraSettings | None = None
    redi: RediSettings = RediSettings()
    on_policy: OnPolicySettings = OnPolicySettings()
    opsd: OpsdSettings = OpsdSettings()
    grpo: GrpoSettings = GrpoSettings()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"training method {self.method!r}: expected one of {list(METHODS)}")

    def as_dict(self) -> dict[str, Any]:
        """Flat: each section's fields under its prefix (`redi_alpha`, `opsd_clip`, `num_generations`, ...)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key in _SECTIONS:
                out.update({_SECTIONS[key] + k: v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def peft_config(self) -> LoraConfig | None:
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
