"""The presets a flywheel.yaml starts from (`preset: playground`), as overrides of the models' defaults."""

from __future__ import annotations

from typing import Any, Literal

PresetName = Literal["playground", "smollm2", "smollm2-arithmetic", "production"]

PRESETS: dict[str, dict[str, Any]] = {
    "playground": {
        "name": "flywheel-playground",
        "task": {"source": "playground"},
        "model": {"kind": "playground-tiny"},
    },
    "smollm2": {
        "name": "flywheel-smollm2",
        "task": {"source": "gsm8k", "prompt_format": "chatml"},
        "model": {"kind": "smollm2-gguf", "max_length": 512},
        "engine": {"batch_size": 16},
        "traffic": {"problems_per_cycle": 8, "samples_per_problem": 2, "max_new_tokens": 160, "temperature": 0.7},
        "harvest": {"anchor_fraction": 0.5, "validation_fraction": 0.0, "min_training_examples": 8},
        "training": {"learning_rate": 1e-5, "epochs": 1, "batch_size": 4},
        "benchmark": {"problems_per_suite": 8, "samples_per_problem": 1, "max_new_tokens": 160, "temperature": 0.0},
        "gate": {"max_regression": 0.25},
    },
    # SmolLM2 improving in the loop on two CPU cores (about 15 minutes a cycle): arithmetic asked in words, which
    # it partly solves at the start; vLLM generates, a LoRA adapter trains; a benchmark large enough (1,200
    # problems, greedy) for a CI that can tell a gain of two points from zero. benchmarks/smollm2.py runs it.
    "smollm2-arithmetic": {
        "name": "flywheel-smollm2-arithmetic",
        "task": {"source": "arithmetic"},
        "model": {"kind": "smollm2-gguf", "max_length": 192},
        "engine": {"kind": "vllm", "batch_size": 512},
        "traffic": {"problems_per_cycle": 900, "samples_per_problem": 2, "max_new_tokens": 64, "temperature": 0.5},
        "harvest": {"anchor_fraction": 0.3, "validation_fraction": 0.0, "min_training_examples": 32},
        "training": {
            "learning_rate": 2e-4,
            "epochs": 2,
            "batch_size": 16,
            "lora": {"r": 16, "alpha": 32},
            # opsd and grpo sample at the traffic's temperature; at 1.0 SmolLM2 rambles past the token limit.
            "on_policy": {"temperature": 0.5},
        },
        "benchmark": {"problems_per_suite": 200, "samples_per_problem": 1, "max_new_tokens": 64, "temperature": 0.0},
    },
    "production": {
        "name": "flywheel",
        "task": {"source": "gsm8k"},
        "model": {"kind": "hf", "hf_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_length": 2048},
        "engine": {"kind": "vllm", "device": "cuda", "batch_size": 512},
        "traffic": {"problems_per_cycle": 5000, "samples_per_problem": 8, "max_new_tokens": 1024},
        "training": {"learning_rate": 1e-5, "epochs": 1, "batch_size": 32},
        "benchmark": {"problems_per_suite": 1319, "samples_per_problem": 4, "max_new_tokens": 1024},
    },
}
