"""SmolLM2-135M-Instruct improving in the loop: consecutive cycles, each with its held-out delta and 95% CI.

    .venv/bin/python benchmarks/smollm2.py [--cycles 2] [--home DIR] [--task auto|arithmetic|gsm8k]

Runs `flywheel demo` (bootstrap, then one Dagster cycle per quarter, promotion through the gate) on a config
this script writes into the home, then prints one row per cycle: champion and candidate pass@1 on the
held-out benchmark, the delta with its paired-bootstrap 95% CI, the decision, the tokens generated at
deploy and trained on, and the wall time of each stage.

- On two CPU cores (`--task auto` without a GPU): the `smollm2-arithmetic` preset, arithmetic asked in words,
  which SmolLM2 partly solves at the start (vLLM generates, a LoRA adapter trains; about 15 minutes a cycle).
- With a GPU (`--task auto` when CUDA is available): GSM8K at full size: all 7,473 train questions as the
  quarter's traffic (4 samples each), the 1,319 test questions as the benchmark, 512 new tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# GSM8K at full size on a GPU, on top of the smollm2-arithmetic preset (same LoRA training and gate).
GSM8K_FULL = {
    "task": {"source": "gsm8k", "prompt_format": "chatml"},
    "model": {"max_length": 1024},
    "engine": {"kind": "vllm", "device": "cuda", "batch_size": 1024},
    "traffic": {"problems_per_cycle": 7473, "samples_per_problem": 4, "max_new_tokens": 512, "temperature": 0.5},
    "training": {"batch_size": 32},
    "benchmark": {"problems_per_suite": 1319, "samples_per_problem": 1, "max_new_tokens": 512, "temperature": 0.0},
}


def config_for(task: str) -> dict:
    if task == "auto":
        import torch

        task = "gsm8k" if torch.cuda.is_available() else "arithmetic"
    return {"preset": "smollm2-arithmetic", **(GSM8K_FULL if task == "gsm8k" else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--home", default="", help="the flywheel home (default: a new temporary folder)")
    parser.add_argument("--task", choices=["auto", "arithmetic", "gsm8k"], default="auto")
    parser.add_argument("--keep", action="store_true", help="continue in --home instead of starting fresh")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="flywheel-smollm2-"))
    home.mkdir(parents=True, exist_ok=True)
    config = home.parent / f"{home.name}.flywheel.yaml"
    cfg = config_for(args.task)
    # JSON is YAML: the config the demo reads, kept beside the home for the record.
    config.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"config {config}: {json.dumps(cfg)}", flush=True)
    cmd = [
        str(Path(sys.executable).parent / "flywheel"),
        "demo",
        "--cycles",
        str(args.cycles),
        "--home",
        str(home),
        "--config",
        str(config),
        *([] if args.keep else ["--fresh"]),
    ]
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc:
        raise SystemExit(rc)
    summary(home, config)


def summary(home: Path, config: Path) -> None:
    """One row per cycle, read back from the lake: what each cycle generated, trained and gained."""
    from flywheel_dagster.config import load_config
    from flywheel_dagster.evaluation.fmt import with_ci
    from flywheel_dagster.records import REASONING_TRACES, BenchmarkReport, Candidate, Decision
    from flywheel_dagster.traces.lake import Lake

    cfg = load_config(config)
    lake = Lake(str(home / "lake"))
    print(f"\n{cfg.name} ({cfg.task.source}, {cfg.benchmark.problems_per_suite} problems per suite held out)")
    print(
        f"{'cycle':<12}{'champion':>9}{'candidate':>10}{'delta [95% CI]':>28}{'decision':>10}"
        f"{'tokens generated':>18}{'tokens trained':>16}"
    )
    for cycle in BenchmarkReport.cycles(lake):
        report = BenchmarkReport.read(lake, cycle)
        overall = report.overall
        candidate = Candidate.read(lake, cycle)
        decision = Decision.read(lake, cycle) if Decision.exists(lake, cycle) else None
        traces = lake.read_table(REASONING_TRACES, cycle)
        ci = with_ci(overall["delta"], overall["delta_ci"], signed=True)
        print(
            f"{cycle:<12}{overall['champion']:>9.3f}{overall['candidate']:>10.3f}{ci:>28}"
            f"{(decision.decision if decision else '-'):>10}{sum(traces.column('tokens').to_pylist()):>18,}"
            f"{candidate.tokens_trained:>16,}"
        )


if __name__ == "__main__":
    main()
