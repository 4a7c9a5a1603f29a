"""Inference with transformers `generate`: the CPU default engine."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from flywheel_dagster.engines.base import Completion, InferenceEngine, SamplingSettings


def pick_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersEngine:
    """Batched sampling with transformers; reports token counts and the mean log-probability per completion.

    The log-probability is the model's own (temperature 1, before top-p), so it compares across settings.
    """

    name = "transformers"

    def __init__(self, model_dir: str | Path, device: str = "auto", batch_size: int = 256) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = pick_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()

    def generate(self, prompts: list[str], settings: SamplingSettings) -> list[Completion]:
        import torch

        with torch.inference_mode():
            return self._generate(torch, prompts, settings)

    def _generate(self, torch: ModuleType, prompts: list[str], settings: SamplingSettings) -> list[Completion]:
        if not prompts:
            return []
        torch.manual_seed(settings.seed)
        # Sort by length so a batch pads little; results are put back in prompt order.
        jobs = sorted(
            ((i, s) for i in range(len(prompts)) for s in range(settings.n)), key=lambda js: len(prompts[js[0]])
        )
        out: dict[tuple[int, int], Completion] = {}
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            enc = self.tokenizer([prompts[i] for i, _ in batch], return_tensors="pt", padding=True).to(self.device)
            greedy = settings.temperature == 0
            gen = self.model.generate(
                **enc,
                do_sample=not greedy,
                temperature=None if greedy else settings.temperature,
                top_p=None if greedy else settings.top_p,
                top_k=None,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
            new = gen.sequences[:, enc["input_ids"].shape[1] :]
            logits = torch.stack(gen.logits, dim=1).float()
            token_lp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
            # A completion ends at its first EOS (kept, it is a generated token); pads after it are not counted.
            is_eos = new == eos
            ended = is_eos.any(dim=1)
            first_eos = torch.where(
                ended, is_eos.float().argmax(dim=1), torch.full_like(ended, new.shape[1], dtype=torch.long)
            )
            lengths = torch.where(ended, first_eos + 1, first_eos)
            mask = torch.arange(new.shape[1], device=new.device)[None, :] < lengths[:, None]
            sums = (token_lp * mask).sum(dim=1)
            for row, (i, s) in enumerate(batch):
                n_tok = int(lengths[row])
                text_ids = new[row, : int(first_eos[row])]
                out[(i, s)] = Completion(
                    prompt_index=i,
                    sample_index=s,
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                    tokens=n_tok,
                    mean_logprob=float(sums[row]) / max(n_tok, 1),
                    finish_reason="stop" if bool(ended[row]) else "length",
                )
        return [out[k] for k in sorted(out)]

    def close(self) -> None:
        del self.model
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def load_engine(
    kind: str,
    model_dir: str | Path,
    device: str = "auto",
    batch_size: int = 256,
    max_model_len: int | None = None,
    kv_cache_bytes: int | None = None,
    tensor_parallel: int = 1,
) -> InferenceEngine:
    """The engine named in config: transformers (the CPU default) or vllm (the `vllm` extra; `tensor_parallel`
    GPUs hold one model)."""
    if kind == "transformers":
        if tensor_parallel > 1:
            raise ValueError("engine.tensor_parallel > 1 needs engine.kind 'vllm'")
        return TransformersEngine(model_dir, device=device, batch_size=batch_size)
    if kind == "vllm":
        try:
            from flywheel_dagster.engines.vllm_engine import VllmEngine
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ValueError(f"engine.kind 'vllm' needs the vllm extra (pip install -e '.[vllm]'): {err}") from err
        return VllmEngine(
            model_dir,
            device=device,
            max_model_len=max_model_len,
            kv_bytes=kv_cache_bytes,
            tensor_parallel=tensor_parallel,
        )
    raise ValueError(f"engine.kind {kind!r}: expected 'transformers' or 'vllm'")
