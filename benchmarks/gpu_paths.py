"""Throughput of the two compute paths a cycle spends its time in: TRL SFT training and sampling.

    .venv/bin/python benchmarks/gpu_paths.py [--device auto|cpu|cuda] [--steps 100] [--prompts 1024]

For the playground model and a wider Llama of the same family, it builds the model, trains `--steps`
SFT steps (batch 64) on human worked solutions, then samples 4 completions for each of `--prompts`
benchmark prompts, and prints steps/s, trained tokens/s and generated tokens/s. Runs on the CPU here and
unchanged on a GPU node, which is how the GPU figures in the project notes were taken.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel_dagster.base_models import build_playground_model  # noqa: E402
from flywheel_dagster.config import ModelConfig  # noqa: E402
from flywheel_dagster.engines.base import SamplingSettings  # noqa: E402
from flywheel_dagster.engines.transformers_engine import TransformersEngine, pick_device  # noqa: E402
from flywheel_dagster.tasks.playground import ALPHABET, PlaygroundTask  # noqa: E402
from flywheel_dagster.training.settings import TrainSettings
from flywheel_dagster.training.sft import run_sft  # noqa: E402

MODELS = {
    "playground": ModelConfig(kind="playground-tiny"),
    "wide-25M": ModelConfig(kind="playground-tiny", hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    device = pick_device(args.device)
    task = PlaygroundTask()
    rows = [{"prompt": p.prompt, "completion": p.solution} for p in task.anchors(64 * args.steps, 0)]
    prompts = [p.prompt for p in task.benchmark(150, 20240101)][: args.prompts]
    print(f"device: {device}")
    print(f"{'model':<12}{'params':>10}{'train steps/s':>15}{'train tok/s':>13}{'gen seqs':>10}{'gen tok/s':>12}")
    for name in args.models.split(","):
        cfg = MODELS[name]
        with tempfile.TemporaryDirectory() as tmp:
            init = build_playground_model(cfg, ALPHABET, Path(tmp) / "init")
            res = run_sft(
                init,
                rows,
                Path(tmp) / "trained",
                TrainSettings(
                    method="sft",
                    learning_rate=2e-3,
                    epochs=1,
                    batch_size=64,
                    max_length=cfg.max_length,
                    max_steps=args.steps,
                    device=device,
                ),
            )
            engine = TransformersEngine(res.model_dir, device=device, batch_size=1024)
            params = sum(p.numel() for p in engine.model.parameters())
            settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=64, seed=0)
            engine.generate(prompts[:64], settings)  # warm-up
            started = time.perf_counter()
            out = engine.generate(prompts, settings)
            seconds = time.perf_counter() - started
            tokens = sum(c.tokens for c in out)
            print(
                f"{name:<12}{params / 1e6:>9.2f}M{res.steps / res.seconds:>15.2f}"
                f"{res.tokens_trained / res.seconds:>13.0f}{len(out):>10}{tokens / seconds:>12.0f}"
            )


if __name__ == "__main__":
    main()
