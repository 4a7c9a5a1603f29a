"""The training job data-parallel over two processes (torchrun, gloo on the CPU, real DDP): the same loss curve
as one process with the same global batch, the same token counts, one result written by rank 0 alone, and a
kill mid-run that the rerun resumes from the last checkpoint. GPUs (NCCL, FSDP) cannot run here: the same
code path takes them where `training.processes` is set on a GPU machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from test_distill import training_job_spec

from flywheel_dagster.resources import TrainingJobResource
from flywheel_dagster.training.job import RESULT_FILE, TrainJob, command

STEPS = 24
# Two processes each see half of every global batch and DDP averages their gradients; over the tokens of the
# whole batch (TrainingArguments.average_tokens_across_devices), so a step's loss and update are the ones
# of one process with the same batch, up to float reduction order. Measured: 7e-7 apart at most, over 24 steps.
TOLERANCE = 1e-4


def _job(untrained_model: Path, root: Path, processes: int, **training: object) -> list[str]:
    settings = {"max_steps": STEPS, "batch_size": 16, "processes": processes} | training
    return [*command(sys.executable, processes), str(training_job_spec(untrained_model, root, 256, **settings))]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _descendants(pid: int) -> list[int]:
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for child in map(int, found) for d in (child, *_descendants(child))]


def _losses(root: Path) -> dict[int, float]:
    state = json.loads((root / "ckpt" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_the_job_runs_under_torchrun_with_more_than_one_process():
    assert command("py", 1) == ["py", "-m", "flywheel_dagster.training.job"]
    assert command("py", 4) == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "flywheel_dagster.training.job"
    ]  # fmt: skip


def test_two_processes_train_like_one_with_the_same_global_batch(untrained_model, tmp_path):
    runs = {}
    for processes in (1, 2):
        root = tmp_path / f"p{processes}"
        done = subprocess.run(
            _job(untrained_model, root, processes, checkpoint_every=STEPS),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = (json.loads((root / "ckpt" / RESULT_FILE).read_text()), _losses(root))
    (one, one_loss), (two, two_loss) = runs[1], runs[2]
    assert one["steps"] == two["steps"] == STEPS
    assert one["tokens_trained"] == two["tokens_trained"] > 0
    assert sorted(one_loss) == sorted(two_loss) and len(one_loss) >= STEPS // 2
    worst = max(abs(one_loss[s] - two_loss[s]) for s in one_loss)
    assert worst < TOLERANCE, f"loss curves differ by up to {worst:.2e}: {one_loss} vs {two_loss}"
    assert one_loss[max(one_loss)] < one_loss[min(one_loss)]  # it learned something, in both runs alike
    assert (Path(two["model_dir"]) / "model.safetensors").exists()


@pytest.mark.slow
def test_a_killed_two_process_job_resumes_from_its_last_checkpoint(untrained_model, tmp_path):
    argv = _job(untrained_model, tmp_path, 2, checkpoint_every=4)
    first = subprocess.Popen(
        argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    target = tmp_path / "ckpt" / "checkpoint-8" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not target.exists():
        assert first.poll() is None, "the training job ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint-8 within 300 s"
        time.sleep(0.05)
    # A machine or pod dying: torchrun and both ranks at once (torchrun starts each rank in its own session).
    for pid in [first.pid, *_descendants(first.pid)]:
        os.kill(pid, signal.SIGKILL)
    first.wait()
    time.sleep(1)
    assert max(int(p.name.split("-")[1]) for p in (tmp_path / "ckpt").glob("checkpoint-*")) < STEPS  # cut short
    assert not (tmp_path / "ckpt" / RESULT_FILE).exists()
    second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads((tmp_path / "ckpt" / RESULT_FILE).read_text())
    assert result["steps"] == STEPS and result["resumed_from_step"] >= 8
    logged = sorted(_losses(tmp_path))
    assert len(logged) == len(set(logged))


@pytest.mark.slow
def test_dagster_launches_the_two_process_job_through_pipes_and_gets_rank_zeros_result(untrained_model, tmp_path):
    argv = _job(untrained_model, tmp_path, 2)
    job = TrainJob(**json.loads(Path(argv[-1]).read_text()))
    got: dict = {}

    @dg.asset
    def trained(context, training: TrainingJobResource) -> dg.MaterializeResult:  # noqa: ANN001 - Dagster reads the bare name
        got.update(training.train(context, job))
        return dg.MaterializeResult()  # as candidate_model does, after registering the model

    resource = TrainingJobResource(checkpoint_root=str(tmp_path / "ckpt"), launcher="subprocess")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([trained], resources={"training": resource}, instance=instance)
    assert result.success
    assert got["steps"] == STEPS and got["resumed_from_step"] == 0
    assert got == json.loads((tmp_path / "ckpt" / RESULT_FILE).read_text())  # one result, rank 0's
    messages = [r.user_message for r in instance.all_logs(result.run_id)]
    assert sum("training 2026-01-01 with sft" in m for m in messages) == 1  # rank 0 alone speaks through Pipes


def test_a_job_killed_after_its_last_checkpoint_finishes_with_the_same_model(untrained_model, tmp_path):
    """Killed between the final checkpoint and its result: the rerun takes the checkpoint as it is (transformers'
    train() resumed there would run a 25th step of a 24-step run and change the model)."""
    argv = _job(untrained_model, tmp_path, 1, checkpoint_every=4)
    first = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    done = json.loads((tmp_path / "ckpt" / RESULT_FILE).read_text())
    (tmp_path / "ckpt" / RESULT_FILE).unlink()  # as if killed before writing it
    second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "ckpt" / RESULT_FILE).read_text())
    assert (again["steps"], again["resumed_from_step"]) == (STEPS, STEPS)
    assert again["weights_sha256"] == done["weights_sha256"]
    assert not (tmp_path / "ckpt" / f"checkpoint-{STEPS + 1}").exists()


def test_more_processes_than_gpus_is_refused_with_the_setting_to_change(monkeypatch):
    """Four ranks on a machine that shows two GPUs: each rank says which setting to lower, before rank 2 would die
    on CUDA's "invalid device ordinal". (There is no GPU here: torch's count of them is set for the test.)"""
    import torch

    from flywheel_dagster.training.common import distributed_args
    from flywheel_dagster.training.settings import TrainSettings

    settings = TrainSettings("sft", 1e-4, 1.0, 8, 128)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"training.processes 4 but this machine shows 2 GPU\(s\).*at most 2"):
        distributed_args(settings, "cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_args(settings, "cuda") == {"ddp_backend": "nccl"}
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed_args(settings, "cpu") == {"ddp_backend": "gloo"}  # CPU ranks are processes, not GPUs
