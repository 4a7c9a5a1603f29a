"""Long end-to-end runs (several minutes each): `make test-slow`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")


def _run(args, home, timeout):
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([FLYWHEEL, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_playground_demo_improves_the_model(tmp_path):
    out = _run(["demo", "--cycles", "3", "--fresh"], tmp_path / "fw", timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("-> promoted") + out.stdout.count("-> rejected") == 3
    overall = next(line for line in out.stdout.splitlines() if line.lstrip("│ ").startswith("overall"))
    gain_ci_low = float(overall.split("[")[-1].split(",")[0])
    assert gain_ci_low > 0, overall


@pytest.mark.slow
def test_smollm2_preset_completes_one_cycle(tmp_path):
    out = _run(["demo", "--preset", "smollm2", "--cycles", "1", "--fresh"], tmp_path / "fw", timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "cycle " in out.stdout and ("-> promoted" in out.stdout or "-> rejected" in out.stdout)
    assert (tmp_path / "fw" / "models" / "SmolLM2-135M-Instruct" / "config.json").exists()
