"""The layer contract in pyproject.toml ([tool.importlinter]) holds, and it bites: an upward import fails it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": "."}
    )


def test_the_layers_hold():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    for name in ("flywheel_dagster", "assets", "jobs"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    registry = tmp_path / "flywheel_dagster" / "registry.py"
    registry.write_text(registry.read_text() + "\nfrom flywheel_dagster import cycle  # noqa: E402, F401\n")
    jobs_up = tmp_path / "flywheel_dagster" / "hashing.py"
    jobs_up.write_text(jobs_up.read_text() + "\nimport assets  # noqa: E402, F401\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1
    assert "0 kept, 2 broken" in done.stdout
    assert "flywheel_dagster.registry -> flywheel_dagster.cycle" in done.stdout
