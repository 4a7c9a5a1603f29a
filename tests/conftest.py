"""Shared fixtures: a tiny but real flywheel (Dagster instance, MLflow SQLite store, TRL-trained Llama)."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers share two cores: one thread each (and their training subprocesses), so torch's threads
    # do not spin against the other worker's.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The code location's config (jobs.definitions, and ASSETS below): the tests' partitions start at 2026-01-01.
os.environ.setdefault("FLYWHEEL_CONFIG", str(Path(__file__).with_name("flywheel.yaml")))

import pytest  # noqa: E402
import yaml  # noqa: E402

from assets import build_stages  # noqa: E402
from flywheel_dagster.bootstrap import bootstrap  # noqa: E402
from flywheel_dagster.config import build_config, load_config  # noqa: E402
from flywheel_dagster.resources import local_resources  # noqa: E402

FIRST_CYCLE = "2026-01-01"  # schedule.start_date of the code location and of every TinyFlywheel

# A cycle in well under a minute on two cores. The base is trained once (and then cached) on the demo's recipe
# less the 10% of examples with a worked solution shown in the prompt, which only opsd's teacher uses: those
# rows are twice as long, so every batch padded to them, and the base trains in 158 s instead of 330 on two
# cores (pass@1 on 64 problems a suite: 0.318 against 0.332, the same on every suite within 0.1). It solves a
# good share of the easy problems, so a cycle has positives and a broken candidate shows a measurable drop.
TINY = {
    "preset": "playground",
    "name": "flywheel-test",
    "bootstrap": {"reference_shown_fraction": 0.0},
    "traffic": {"problems_per_cycle": 80, "samples_per_problem": 4, "temperature": 1.0},
    "benchmark": {"problems_per_suite": 16, "samples_per_problem": 2, "bootstrap_resamples": 500},
    "training": {"epochs": 1, "learning_rate": 0.0002},
    "schedule": {"start_date": FIRST_CYCLE},
}


# The code location's cycle (built from tests/flywheel.yaml), for dg.materialize.
_STAGES = build_stages(load_config())
ASSETS = _STAGES.assets
CHECKS = _STAGES.checks

CYCLE_ASSETS = {
    "deployment",
    "reasoning_traces",
    "harvested_traces",
    "training_dataset",
    "candidate_model",
    "benchmark_report",
    "champion_model",
    "cycle_audit",
}


class TinyFlywheel:
    """A bootstrapped flywheel in its own folder: config file, lake, MLflow, model cache.

    Training runs in the test's process (launcher in_process) unless a test asks for the subprocess that
    production uses: that launch costs about 18 s of imports a cycle, and test_cycle's whole cycle and
    test_distill's kill-and-resume cover it."""

    def __init__(self, root: Path, overrides: dict | None = None, launcher: str = "in_process") -> None:
        self.root = root
        self.config_path = root / "flywheel.yaml"
        merged = {**TINY, **(overrides or {})}
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(merged))
        self.cfg = load_config(self.config_path)
        self.resources = local_resources(root / "home", str(self.config_path), training_launcher=launcher)
        self.registry = self.resources["mlflow"].registry(self.cfg.name)
        self.lake = self.resources["lake"].lake()
        self.base = bootstrap(self.cfg, self.registry, root / "home" / "models")


REPO = Path(__file__).resolve().parents[1]
# What the bootstrapped base depends on: its config and the code that builds and trains it. The key names a
# cached copy of the trained folder, so a rerun registers that copy instead of training again (about 90 s).
BOOTSTRAP_SOURCES = (
    "flywheel_dagster/bootstrap.py",
    "flywheel_dagster/base_models.py",
    "flywheel_dagster/tasks/playground.py",
    "flywheel_dagster/tasks/base.py",
    "flywheel_dagster/training/sft.py",
    "flywheel_dagster/training/common.py",
    "flywheel_dagster/training/settings.py",
)
CACHE_ENV = "FLYWHEEL_TEST_CACHE"


def bootstrap_key(cfg) -> str:  # noqa: ANN001 - FlywheelConfig
    import hashlib
    import json

    import torch
    import transformers
    import trl

    h = hashlib.sha256()
    for section in ("model", "bootstrap", "task", "training"):
        h.update(json.dumps(getattr(cfg, section).model_dump(mode="json"), sort_keys=True).encode())
    for rel in BOOTSTRAP_SOURCES:
        h.update((REPO / rel).read_bytes())
    h.update(f"{torch.__version__} {transformers.__version__} {trl.__version__}".encode())
    return h.hexdigest()[:20]


@pytest.fixture(scope="session")
def trained_flywheel(tmp_path_factory) -> TinyFlywheel:  # noqa: ANN001
    """A flywheel bootstrapped the real way: build the tiny Llama, SFT it on human solutions, register v1.

    The trained folder is cached by content (config, code, library versions) under $FLYWHEEL_TEST_CACHE
    (default .flywheel/test-cache, ignored by git): a rerun with nothing changed registers the cached copy
    (model kind hf). A fresh clone trains; FLYWHEEL_TEST_CACHE=off always trains."""
    import shutil

    cache_root = os.environ.get(CACHE_ENV, str(REPO / ".flywheel" / "test-cache"))
    if cache_root == "off":
        return TinyFlywheel(tmp_path_factory.mktemp("trained"))
    import fcntl

    cached = Path(cache_root) / f"bootstrap-{bootstrap_key(build_config(TINY))}"
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.with_name(cached.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers: one trains, the others wait and reuse it
        if (cached / "config.json").exists():
            model = {"kind": "hf", "hf_path": str(cached)}
            return TinyFlywheel(tmp_path_factory.mktemp("trained"), {"model": model})
        # On the worker's one thread: the other worker runs the modules that need no trained base meanwhile
        # (its vLLM and Dagster processes), and two torch threads on two busy cores train slower than one. In
        # a suite without the cache, test_serving's first setup (this training, then the weakened base and a
        # vLLM start) took 470 s with two threads and 288 s with one; the suite 796 s and 695 s.
        fw = TinyFlywheel(tmp_path_factory.mktemp("trained"))
        tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(fw.registry.local_path(fw.base.ref), tmp)
        tmp.replace(cached)
        return fw


@pytest.fixture(scope="session")
def tiny_flywheel_factory(tmp_path_factory, trained_flywheel):  # noqa: ANN001, ANN201
    """More flywheels in their own folders, starting from the session's trained base (registered as kind hf)."""
    base_dir = trained_flywheel.registry.local_path(trained_flywheel.base.ref)

    def make(
        name: str, overrides: dict | None = None, base: Path | None = None, launcher: str = "in_process"
    ) -> TinyFlywheel:
        model = {"kind": "hf", "hf_path": str(base or base_dir), "max_length": 128}
        return TinyFlywheel(tmp_path_factory.mktemp(name), {"model": model, **(overrides or {})}, launcher)

    return make


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:  # noqa: ANN001
    """A playground model straight from its initializer, in under a second: for tests of plumbing (serving,
    resuming a killed training job) where what the model answers does not matter. They run on one worker
    while the other trains the base."""
    from flywheel_dagster.base_models import build_playground_model
    from flywheel_dagster.tasks.playground import ALPHABET

    cfg = build_config(TINY)
    return build_playground_model(cfg.model, ALPHABET, tmp_path_factory.mktemp("untrained") / "model", seed=0)


@pytest.fixture(scope="session")
def untrained_flywheel_factory(tmp_path_factory, untrained_model):  # noqa: ANN001, ANN201
    """Flywheels whose base (v1) is the untrained model (kind hf)."""

    def make(name: str, overrides: dict | None = None) -> TinyFlywheel:
        model = {"kind": "hf", "hf_path": str(untrained_model), "max_length": 128}
        return TinyFlywheel(tmp_path_factory.mktemp(name), {"model": model, **(overrides or {})})

    return make


# The order the two workers take modules in (pytest-xdist --dist loadfile, --no-loadscope-reorder): the
# longest module that needs the trained base first, so that its worker starts training the base at once; then
# the modules that need no trained base, which the other worker runs meanwhile; then the rest, longest first
# (measured seconds on two workers), short ones last: xdist hands a worker its next module when two tests of
# its current one are left, so a long module queued late ends alone (test_distill after test_vllm_engine left
# one worker idle for the last 123 s). Within a module, the tests that need no trained base run first.
LONGEST_FIRST = ("test_serving", "test_cycle", "test_distill", "test_vllm_engine", "test_harvest_cycle", "test_cli")
LIGHT_LONGEST_FIRST = ("test_serve_cli", "test_webserver", "test_kubernetes")  # need no trained base


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    def needs_base(item) -> bool:  # noqa: ANN001
        return "trained_flywheel" in getattr(item, "fixturenames", ())

    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.module.__name__, []).append(item)
    heavy = [m for m in LONGEST_FIRST if m in modules]
    light = [m for m in modules if m not in heavy and not any(needs_base(i) for i in modules[m])]
    light.sort(key=lambda m: m not in LIGHT_LONGEST_FIRST)  # the long ones first (sort is stable)
    rest = [m for m in modules if m not in heavy and m not in light]
    order = heavy[:1] + light + heavy[1:] + rest
    items[:] = [i for m in order for i in sorted(modules[m], key=needs_base)]  # sorted() is stable


@pytest.fixture(scope="session")
def weakened_base(tmp_path_factory, trained_flywheel) -> Path:  # noqa: ANN001
    """The session's base with Gaussian noise on its weights (35% of each tensor's spread): it still solves some
    problems (pass@1 about 0.15 against 0.35), so one tiny cycle of training measurably improves on it. For the
    tests that need a candidate that passes the gate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = trained_flywheel.registry.local_path(trained_flywheel.base.ref)
    model = AutoModelForCausalLM.from_pretrained(source)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.35 * p.std())
    out = tmp_path_factory.mktemp("weakened") / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out
