import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import CYCLE_ASSETS

ROOT = Path(__file__).resolve().parents[1]


def test_code_location_validates(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FLYWHEEL_HOME": str(tmp_path / "fw")}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "All code locations passed validation" in out.stderr + out.stdout


def test_definitions_hold_the_cycle():
    from jobs.definitions import defs

    job = defs.resolve_job_def("flywheel_cycle")
    keys = {k.path[-1] for k in job.asset_layer.executable_asset_keys}
    assert keys == CYCLE_ASSETS
    # training and inference wait for a slot in the `gpu` pool; harvest (CPU work) does not
    assert defs.resolve_assets_def("candidate_model").op.pool == "gpu"
    assert defs.resolve_assets_def("reasoning_traces").op.pool == "gpu"
    assert defs.resolve_assets_def("harvested_traces").op.pool is None
    # the training job's pod asks Kubernetes for training.gpus GPUs (1 by default); CPU assets ask for none
    k8s = json.loads(defs.resolve_assets_def("candidate_model").op.tags["dagster-k8s/config"])  # tags are strings
    assert k8s["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "dagster-k8s/config" not in defs.resolve_assets_def("harvested_traces").op.tags
    # the gates: loop-health monitors on the harvest, PII and overlap on the training set, then promotion
    checks = {(k.asset_key.path[-1], k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        *(
            ("harvested_traces", m)
            for m in (
                "distinct_3",
                "near_duplicate_rate",
                "answer_diversity",
                "length_ks",
                "verified_accuracy",
                "verified_accuracy_drop",
            )
        ),
        ("training_dataset", "no_pii"),
        ("training_dataset", "no_benchmark_overlap"),
        ("benchmark_report", "promotion_gate"),
        ("benchmark_report", "human_approval"),
    }
    # after `flywheel approve`/`reject`: the approval check again, the promotion, the audit record
    release = defs.resolve_job_def("release_cycle")
    assert {k.path[-1] for k in release.asset_layer.executable_asset_keys} == {"champion_model", "cycle_audit"}
    assert {k.name for k in release.asset_layer.asset_graph.asset_check_keys} >= {"human_approval"}


def test_one_config_builds_the_definitions_and_reaches_every_asset(tmp_path, monkeypatch):  # noqa: ANN001
    """build_defs(cfg): the partitions, the GPU limits and the config the assets load at run time all come from
    the one config object, so editing flywheel.yaml cannot make them disagree until the location reloads."""
    from flywheel_dagster.config import build_config
    from jobs.definitions import build_defs

    monkeypatch.delenv("FLYWHEEL_TRAINING_LAUNCHER", raising=False)  # the step pod launches the job itself
    cfg = build_config({"preset": "playground", "schedule": {"start_date": "2025-04-01"}, "training": {"gpus": 2}})
    defs = build_defs(cfg)
    partitions = defs.resolve_assets_def("deployment").partitions_def
    assert partitions.get_first_partition_key() == "2025-04-01"
    k8s = json.loads(defs.resolve_assets_def("candidate_model").op.tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 2}
    bound = defs.resources["flywheel_config"]
    assert bound.load() == cfg and bound.load().schedule.start_date == "2025-04-01"


def test_with_the_kubernetes_launcher_only_the_training_pod_asks_for_the_gpus(monkeypatch):
    """The job's own pod (training_pod_spec) asks for training.gpus; the step pod that launches it asks for none,
    or an N-GPU node would hold both and the training pod would wait for GPUs its launcher holds."""
    from flywheel_dagster.config import build_config
    from flywheel_dagster.resources import training_pod_spec
    from jobs.definitions import build_defs

    monkeypatch.setenv("FLYWHEEL_TRAINING_LAUNCHER", "kubernetes")
    cfg = build_config({"preset": "playground", "training": {"gpus": 4, "processes": 4, "batch_size": 64}})
    step = build_defs(cfg).resolve_assets_def("candidate_model").op
    assert step.pool == "gpu" and "dagster-k8s/config" not in step.tags
    assert training_pod_spec(cfg, "/checkpoints")["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4}
