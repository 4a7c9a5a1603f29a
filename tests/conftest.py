"""Shared fixtures: a tiny but real flywheel (Dagster instance, MLflow SQLite store, TRL-trained Llama)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flywheel_dagster.bootstrap import bootstrap
from flywheel_dagster.config import load_config
from flywheel_dagster.resources import local_resources

# Small enough for a cycle in well under a minute on two cores, big enough to learn the easy levels a little.
TINY = {
    "preset": "playground",
    "name": "flywheel-test",
    "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 192},
    "bootstrap": {"examples": 6000, "epochs": 2, "learning_rate": 0.003},
    "traffic": {"problems_per_cycle": 60, "samples_per_problem": 4, "temperature": 1.0},
    "benchmark": {"problems_per_suite": 12, "samples_per_problem": 2, "bootstrap_resamples": 500},
    "training": {"epochs": 1, "learning_rate": 0.0005},
}


class TinyFlywheel:
    """A bootstrapped flywheel in its own folder: config file, lake, MLflow, model cache."""

    def __init__(self, root: Path, overrides: dict | None = None) -> None:
        self.root = root
        self.config_path = root / "flywheel.yaml"
        merged = {**TINY, **(overrides or {})}
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(merged))
        self.cfg = load_config(self.config_path)
        self.resources = local_resources(root / "home", str(self.config_path))
        self.registry = self.resources["mlflow"].registry(self.cfg.name)
        self.lake = self.resources["lake"].lake()
        self.base = bootstrap(self.cfg, self.registry, root / "home" / "models")


@pytest.fixture(scope="session")
def tiny_flywheel_factory(tmp_path_factory):  # noqa: ANN001, ANN201
    def make(name: str, overrides: dict | None = None) -> TinyFlywheel:
        return TinyFlywheel(tmp_path_factory.mktemp(name), overrides)

    return make
