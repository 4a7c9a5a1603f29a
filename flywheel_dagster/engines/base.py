"""The inference-engine interface: batched sampling of n completions per prompt."""

from __future__ import annotations

from dataclasses import dataclass
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
