"""The kubernetes profile: each step's Kubernetes Job as dagster-k8s's own code builds it, without a cluster.

(No cluster runs here, so the pods are rendered, not scheduled: what is checked is what the API would get.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# One process renders every config below, each through the code location's build_defs (one interpreter start
# and one torch import instead of one a config).
RENDER = """
import json, os, sys
sys.path.insert(0, ".")
from flywheel_dagster.config import load_config
from flywheel_dagster.k8s import gpu_limit, render_step_jobs
from jobs.definitions import build_defs
results = {}
for name, path in json.loads(sys.argv[1]).items():
    os.environ["FLYWHEEL_CONFIG"] = path
    defs = build_defs(load_config(path))
    jobs = render_step_jobs(defs, "flywheel_cycle", image="registry.example/flywheel:1")
    out = {}
    for step, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        out[step] = {
            "gpu": gpu_limit(job),
            "node_selector": pod.get("nodeSelector") or {},
            "tolerations": pod.get("tolerations") or [],
            "image": pod["containers"][0]["image"],
        }
    results[name] = {"steps": out, "executor": defs.executor.name if defs.executor else None,
                     "pools": {n: defs.resolve_assets_def(n).op.pool for n in out}}
print(json.dumps(results))
"""

GPU_ASSETS = {"reasoning_traces", "candidate_model", "benchmark_report"}
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
CONFIGS = {
    "gpu_nodes": {
        "preset": "playground",
        "compute": {
            "profile": "kubernetes",
            "gpu": {"per_step": 1, "node_selector": SELECTOR, "tolerations": [TOLERATION]},
        },
        "training": {"gpus": 4},
    },
    "rephrasing": {
        "preset": "playground",
        "compute": {"profile": "kubernetes"},
        "harvest": {"reformat": {"as_is": 1, "rephrase": 1}},
    },
    "local": {"preset": "playground"},
    "local_multiprocess": {"preset": "playground", "compute": {"local_executor": "multiprocess"}},
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:  # noqa: ANN001
    """Each config's step Jobs, executor and pools, as the code location loaded with that flywheel.yaml has them."""
    tmp = tmp_path_factory.mktemp("k8s")
    paths = {}
    for name, config in CONFIGS.items():
        paths[name] = str(tmp / f"{name}.yaml")
        Path(paths[name]).write_text(yaml.safe_dump(config))
    env = {**os.environ, "DAGSTER_HOME": str(tmp), "FLYWHEEL_HOME": str(tmp)}
    out = subprocess.run(
        [sys.executable, "-c", RENDER, json.dumps(paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gpu_requests_land_on_the_gpu_assets_only(rendered):  # noqa: ANN001
    got = rendered["gpu_nodes"]
    steps = got["steps"]
    assert got["executor"] == "k8s"
    assert set(steps) >= GPU_ASSETS | {"harvested_traces", "training_dataset", "champion_model", "cycle_audit"}
    for name, step in steps.items():
        assert step["image"] == "registry.example/flywheel:1"
        if name in GPU_ASSETS:
            assert step["gpu"] == (4 if name == "candidate_model" else 1), name
            assert step["node_selector"] == SELECTOR and step["tolerations"] == [TOLERATION], name
            assert got["pools"][name] == "gpu"
        else:  # CPU steps: no GPU, free to land on any node
            assert step["gpu"] == 0 and step["node_selector"] == {} and step["tolerations"] == [], name
            assert got["pools"][name] is None


def test_rephrasing_makes_building_the_training_set_a_gpu_step(rendered):  # noqa: ANN001
    steps = rendered["rephrasing"]["steps"]
    assert steps["training_dataset"]["gpu"] == 1 and steps["harvested_traces"]["gpu"] == 0


def test_the_local_profile_runs_a_cycles_steps_in_the_runs_process(rendered):  # noqa: ANN001
    got = rendered["local"]
    assert got["executor"] == "in_process"  # runs from the UI: one process a run, not one a step
    assert got["steps"]["reasoning_traces"]["gpu"] == 1  # the tags are there; local executors ignore them
    assert rendered["local_multiprocess"]["executor"] == "multiprocess"


def test_the_helm_values_example_runs_steps_as_kubernetes_jobs():
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["FLYWHEEL_PROFILE"] == "production" and "FLYWHEEL_CONFIG" in env
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "jobs.definitions"]
    pools = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert pools["maxConcurrentRuns"] >= 1


def test_the_training_pod_for_pipes_k8s_asks_for_gpus_and_mounts_the_checkpoints():
    """training launcher 'kubernetes': the pod PipesK8sClient would create, built by dagster-k8s's build_pod_body."""
    from dagster_k8s.pipes import build_pod_body

    from flywheel_dagster.config import build_config
    from flywheel_dagster.resources import training_pod_spec

    cfg = build_config(
        {
            "training": {"gpus": 8},
            "compute": {"gpu": {"node_selector": {"pool": "h100"}, "tolerations": [{"key": "nvidia.com/gpu"}]}},
        }
    )
    spec = training_pod_spec(cfg, "/checkpoints", "flywheel-checkpoints")
    pod = build_pod_body(
        "train-2026-01-01",
        "registry.example/flywheel:1",
        ["python", "-m", "flywheel_dagster.training.job"],
        {"DAGSTER_PIPES_CONTEXT": "..."},
        None,
        spec,
    ).to_dict()
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}  # quantities are strings
    assert container["command"] == ["python", "-m", "flywheel_dagster.training.job"]
    assert container["volume_mounts"][0]["mount_path"] == "/checkpoints"
    assert pod["spec"]["volumes"][0]["persistent_volume_claim"]["claim_name"] == "flywheel-checkpoints"
    assert pod["spec"]["node_selector"] == {"pool": "h100"} and pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert len(pod["spec"]["volumes"]) == 1  # one rank: no shared memory between ranks to make room for
    ranks = cfg.model_copy(update={"training": cfg.training.model_copy(update={"processes": 8})})
    pod = build_pod_body("train", "img", ["python"], {}, None, training_pod_spec(ranks, "/checkpoints", "")).to_dict()
    (volume,) = pod["spec"]["volumes"]
    assert volume["name"] == "dshm" and volume["empty_dir"] == {"medium": "Memory", "size_limit": None}
    assert pod["spec"]["containers"][0]["volume_mounts"][0]["mount_path"] == "/dev/shm"


def test_the_training_launcher_comes_from_the_environment_and_an_unknown_one_is_named(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pytest

    from flywheel_dagster.resources import TRAINING_LAUNCHERS, local_resources

    assert local_resources(tmp_path)["training"].launcher == "subprocess"
    monkeypatch.setenv("FLYWHEEL_TRAINING_LAUNCHER", "in_process")
    assert local_resources(tmp_path)["training"].launcher == "in_process"
    assert local_resources(tmp_path, training_launcher="subprocess")["training"].launcher == "subprocess"
    monkeypatch.setenv("FLYWHEEL_TRAINING_LAUNCHER", "slurm")
    training = local_resources(tmp_path)["training"]
    job = SimpleNamespace(checkpoint_dir=str(tmp_path / "ckpt"), out_dir=str(tmp_path / "out"), cycle="2026-01-01")
    with pytest.raises(ValueError, match=r"training launcher 'slurm': expected one of") as err:
        training.train(None, job)
    assert all(name in str(err.value) for name in TRAINING_LAUNCHERS)
