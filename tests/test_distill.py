"""The distill stage: every method completes a cycle through Dagster; LoRA adapters; crash and resume.

The method cycles train in the test's process (launcher in_process: the methods' wiring is the point); the
crash-and-resume test runs the job in its own process, as Dagster Pipes launches it in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from conftest import ASSETS, CHECKS, CYCLE_ASSETS

from flywheel_dagster.base_models import merged_model
from flywheel_dagster.records import BenchmarkReport, Candidate
from flywheel_dagster.registry import BASE_VERSION_TAG, weights_sha256
from flywheel_dagster.tasks.playground import PlaygroundTask
from flywheel_dagster.traces.lake import Lake
from flywheel_dagster.traces.schema import TRAINING_SCHEMA
from flywheel_dagster.training.common import COUNTERS_FILE
from flywheel_dagster.training.job import RESULT_FILE, TrainJob
from flywheel_dagster.training.settings import TrainSettings

Q1 = "2026-01-01"

# Small on-policy settings: 24 prompts x 4 samples, a few steps; the point is the wiring, not the gain.
ON_POLICY = {"samples_per_prompt": 4, "max_prompts": 24, "max_new_tokens": 40}
METHODS = {
    "redi": {"method": "redi", "epochs": 1, "redi": {"alpha": 0.8, "learning_rate": 2e-5, "epochs": 1}},
    "opsd": {
        "method": "opsd",
        "epochs": 1,
        "batch_size": 32,
        "on_policy": ON_POLICY,
        "lora": {"r": 4, "alpha": 8, "registered_as": "adapter"},
        "learning_rate": 1e-3,
    },
    "grpo": {"method": "grpo", "epochs": 1, "batch_size": 32, "on_policy": ON_POLICY, "learning_rate": 5e-5},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_completes_a_cycle(tiny_flywheel_factory, method):
    fw = tiny_flywheel_factory(f"distill-{method}", {"training": METHODS[method]})
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*ASSETS, *CHECKS], partition_key=Q1, resources=fw.resources, instance=instance, raise_on_error=False
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]
    mats = {e.asset_key.path[-1]: e for e in result.get_asset_materialization_events()}
    assert set(mats) == CYCLE_ASSETS
    meta = mats["candidate_model"].step_materialization_data.materialization.metadata
    assert meta["method"].value == method
    candidate = Candidate.read(fw.lake, Q1).to_json()
    assert candidate["method"] == method and candidate["parent_version"] == fw.base.ref.version
    assert candidate["tokens_trained"] > 0
    assert candidate["steps"] > 0
    assert candidate["weights_sha256"] != fw.base.weights_sha256  # it did train
    if method == "redi":
        assert candidate["tokens_generated"] == 0
        assert meta["redi/pairs"].value > 0
    else:
        assert candidate["tokens_generated"] > 0  # on-policy: the model sampled while training
    # the run's config, curves and token counts are in the cycle's MLflow distill run
    run = fw.registry.client.get_run(candidate["run_id"])
    assert run.data.params["training.method"] == method
    assert run.data.metrics["tokens_trained"] == candidate["tokens_trained"]
    assert run.data.metrics["tokens_generated"] == candidate["tokens_generated"]
    history = fw.registry.client.get_metric_history(candidate["run_id"], "train/loss")
    assert len(history) >= 1
    method_curve = {"redi": "train/redi/negative_term", "opsd": "train/opsd/kl", "grpo": "train/reward"}[method]
    assert fw.registry.client.get_metric_history(candidate["run_id"], method_curve)
    # the checkpoints are gone once the model is registered
    assert not any((fw.root / "home" / "checkpoints").rglob("checkpoint-*"))
    # the benchmark judged the candidate against the champion and the gate decided
    report = BenchmarkReport.read(fw.lake, Q1).to_json()
    assert report["candidate"]["version"] == candidate["version"]
    if method == "opsd":  # registered as a LoRA adapter on the champion; engines load it merged
        ref = fw.registry.version(candidate["version"])
        assert fw.registry.is_adapter(ref)
        assert (fw.registry.files_path(ref) / "adapter_config.json").exists()
        mv = fw.registry.client.get_model_version(fw.registry.model_name, ref.version)
        assert mv.tags[BASE_VERSION_TAG] == fw.base.ref.version
        merged = fw.registry.local_path(ref)
        assert (merged / "config.json").exists()
        assert weights_sha256(merged) != weights_sha256(fw.registry.local_path(fw.base.ref))


def test_lora_merged_and_adapter_give_the_same_model(trained_flywheel, tmp_path):
    """`registered_as: merged` saves full weights equal to the adapter applied to its base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel_dagster.training.settings import LoraSettings
    from flywheel_dagster.training.sft import run_sft

    base = trained_flywheel.registry.local_path(trained_flywheel.base.ref)
    rows = [{"prompt": p.prompt, "completion": p.solution} for p in PlaygroundTask().anchors(64, seed=5)]
    outs = {}
    for mode in ("adapter", "merged"):
        settings = TrainSettings(
            method="sft",
            learning_rate=1e-3,
            epochs=1,
            batch_size=16,
            max_length=128,
            device="cpu",
            lora=LoraSettings(r=4, alpha=8, registered_as=mode),
        )
        result = run_sft(base, rows, tmp_path / mode, settings)
        assert result.adapter == (mode == "adapter")
        outs[mode] = result.model_dir
    assert (outs["adapter"] / "adapter_config.json").exists() and not (outs["adapter"] / "config.json").exists()
    merged = merged_model(outs["adapter"], base, tmp_path / "adapter-merged")
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok(["Q:12+34\n4+2=6:6;"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(outs["merged"])(ids).logits
        c = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert torch.allclose(a, b, atol=1e-5)  # same seed, same data: the same adapter, merged either way
    assert not torch.allclose(a, c, atol=1e-3)  # and it did change the model


def _training_partition(lake: Lake, n: int) -> None:
    problems = PlaygroundTask().anchors(n, seed=11)
    rows = [
        {
            "example_id": f"human/{p.problem_id}",
            "prompt": p.prompt,
            "completion": p.solution,
            "origin": "human",
            "split": "train",
            "trace_id": None,
            "problem_id": p.problem_id,
            "suite": p.suite,
            "strategy": None,
        }
        for p in problems
    ]
    lake.write_table("training_dataset", Q1, pa.Table.from_pylist(rows, schema=TRAINING_SCHEMA))


def training_job_spec(untrained_model: Path, root: Path, examples: int, **training: object) -> Path:
    """A TrainJob file for the untrained playground model on `examples` anchor rows, sft with `training` on top of
    the tiny config, checkpointing into root/ckpt."""
    from conftest import TINY

    from flywheel_dagster.config import build_config

    _training_partition(Lake(str(root / "lake")), examples)
    settings = {**TINY["training"], "method": "sft", **training}
    cfg = build_config({**TINY, "model": {"kind": "hf", "hf_path": str(untrained_model)}, "training": settings})
    job = TrainJob(
        config=cfg.model_dump(mode="json"),
        cycle=Q1,
        champion_dir=str(untrained_model),
        lake_root=str(root / "lake"),
        out_dir=str(root / "ckpt" / "model"),
        checkpoint_dir=str(root / "ckpt"),
    )
    spec = root / "job.json"
    spec.write_text(json.dumps(job.as_dict()))
    return spec


def test_training_job_resumes_from_its_last_checkpoint_after_a_kill(untrained_model, tmp_path):
    """Kill the training process mid-run (SIGKILL, no chance to clean up); the rerun resumes, not restarts. (From
    the untrained model: resuming does not depend on what the weights know.)"""
    spec = training_job_spec(untrained_model, tmp_path, 512, max_steps=60, checkpoint_every=5, batch_size=64)
    command = [sys.executable, "-m", "flywheel_dagster.training.job", str(spec)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = tmp_path / "ckpt" / "checkpoint-15" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not target.exists():
        assert first.poll() is None, "the training job ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint-15 within 240 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "ckpt" / RESULT_FILE).exists()  # it really died before finishing
    killed_at = max(int(p.name.split("-")[1]) for p in (tmp_path / "ckpt").glob("checkpoint-*"))
    assert 15 <= killed_at < 60
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    result = json.loads((tmp_path / "ckpt" / RESULT_FILE).read_text())
    assert result["steps"] == 60
    assert result["resumed_from_step"] >= 15  # from the last whole checkpoint, not from 0
    state = json.loads((tmp_path / "ckpt" / "checkpoint-60" / "trainer_state.json").read_text())
    # The loss log of the resumed run starts after the resume point: steps before it were not redone.
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == sorted(logged) and len(logged) == len(set(logged))
    assert (tmp_path / "ckpt" / "checkpoint-60" / COUNTERS_FILE).exists()
    assert (Path(result["model_dir"]) / "model.safetensors").exists()


def test_a_checkpoint_the_kill_cut_short_is_passed_over_for_the_one_before(tmp_path):
    """A kill while checkpoint-16 was written leaves it without a whole trainer_state.json: the job resumes from
    checkpoint-8 (not from step 0, again and again at every later kill before step 16); numbers, not names, order
    them."""
    from flywheel_dagster.training.common import last_checkpoint

    assert last_checkpoint(tmp_path / "none") == (None, 0)
    for step, state in ((8, json.dumps({"global_step": 8})), (16, None), (24, '{"global_st'), (9, "{}")):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-99.tmp").mkdir()  # not a checkpoint's name
    assert last_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-8"), 8)
    (tmp_path / "checkpoint-16" / "trainer_state.json").write_text(json.dumps({"global_step": 16}))
    assert last_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-16"), 16)
