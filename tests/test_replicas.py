"""Generation across engine replicas on a real local Ray cluster: two CPU replicas of the transformers engine
give exactly the traces one replica gives, for the same seeds, whichever replica takes which shard."""

from __future__ import annotations

import pytest

from flywheel_dagster.engines.base import SamplingSettings
from flywheel_dagster.engines.replicas import EngineSpec, ReplicatedEngine, shard_seed
from flywheel_dagster.tasks.playground import PlaygroundTask


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_two_replicas_give_the_traces_of_one(ray_cluster, untrained_model):
    prompts = [p.prompt for p in PlaygroundTask().traffic(0, 21)]
    settings = SamplingSettings(n=3, temperature=1.0, max_new_tokens=24, seed=5)
    spec = EngineSpec("transformers", str(untrained_model), device="cpu", batch_size=16)
    runs = {}
    for replicas in (1, 2):
        engine = ReplicatedEngine(spec, replicas, shard_prompts=4, cpus_per_replica=1)
        try:
            runs[replicas] = engine.generate(prompts, settings)
            if replicas == 2:
                runs["other seed"] = engine.generate(prompts, SamplingSettings(**{**settings.__dict__, "seed": 6}))
        finally:
            engine.close()
    one, two = runs[1], runs[2]
    assert [(c.prompt_index, c.sample_index) for c in one] == [(i, s) for i in range(21) for s in range(3)]
    assert one == two  # texts, token counts, log-probabilities, finish reasons
    assert len({c.text for c in one}) > 10  # sampled, not one answer repeated
    assert [c.text for c in runs["other seed"]] != [c.text for c in one]


def test_shard_seeds_depend_on_the_seed_and_the_shard_alone():
    assert shard_seed(5, 0) == shard_seed(5, 0) != shard_seed(5, 1) != shard_seed(6, 1)
    assert all(0 <= shard_seed(s, k) < 2**31 for s in range(5) for k in range(5))


def test_replicas_the_machine_cannot_place_are_refused_before_any_starts(ray_cluster, untrained_model):
    """Three one-CPU replicas on this two-CPU cluster: the third would never start and the step would wait on its
    shards forever. Refused at once, naming the setting and what the cluster has."""
    spec = EngineSpec("transformers", str(untrained_model), device="cpu", batch_size=16)
    with pytest.raises(ValueError, match=r"engine.replicas 3 need 3 CPUs at once .* has 2 CPUs and 0 GPUs"):
        ReplicatedEngine(spec, 3, shard_prompts=4, cpus_per_replica=1)
    # The same from the config, through the engine resource: two replicas of two CPUs each (engine.cpus_per_replica).
    from flywheel_dagster.config import build_config
    from flywheel_dagster.resources import EngineResource

    cfg = build_config({"engine": {"replicas": 2, "cpus_per_replica": 2}})
    with pytest.raises(ValueError, match=r"engine.replicas 2 need 4 CPUs at once \(2 each\)"):
        EngineResource(device="cpu").load(cfg, untrained_model)


def test_replicas_that_do_not_start_in_time_are_given_back_and_the_others_do_the_work(ray_cluster, untrained_model):
    """A replica the cluster cannot place in time (here: one CPU of the two held by another actor) is killed and
    the one that started samples every shard: the same traces as two replicas. A replica whose engine fails to
    load raises its own error, and close() after it gives everything back."""
    import ray

    prompts = [p.prompt for p in PlaygroundTask().traffic(0, 9)]
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=16, seed=3)
    spec = EngineSpec("transformers", str(untrained_model), device="cpu", batch_size=16)
    both = ReplicatedEngine(spec, 2, shard_prompts=4, cpus_per_replica=1)
    try:
        want = both.generate(prompts, settings)
    finally:
        both.close()

    holder = _holder()
    engine = ReplicatedEngine(spec, 2, shard_prompts=4, cpus_per_replica=1, start_timeout_s=20)
    try:
        assert engine.generate(prompts, settings) == want
        assert len(engine.replicas) == 1 and "1 of 2 did not start" in engine.name
    finally:
        engine.close()
        ray.kill(holder)
    broken = ReplicatedEngine(EngineSpec("transformers", "/nonexistent/model", device="cpu"), 1, cpus_per_replica=1)
    with pytest.raises(Exception, match="nonexistent"):
        broken.generate(prompts, settings)
    broken.close()
    assert broken.replicas == []


def _holder():  # noqa: ANN202 - a Ray actor handle
    """An actor that holds one CPU of the cluster until killed, started."""
    import ray

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> int:
            return 1

    holder = Holder.remote()
    ray.get(holder.ping.remote())
    return holder


def test_no_replica_started_fails_in_its_time_naming_what_was_asked(ray_cluster, untrained_model):
    """Both CPUs held elsewhere: the one replica cannot be placed. The step fails after start_timeout_s (not a
    minute more waiting to close what never started), saying what it asked for and what the cluster has."""
    import time

    import ray

    from flywheel_dagster.engines.replicas import ReplicasNotStarted

    holders = [_holder(), _holder()]
    spec = EngineSpec("transformers", str(untrained_model), device="cpu", batch_size=16)
    engine = ReplicatedEngine(spec, 1, shard_prompts=4, cpus_per_replica=2, start_timeout_s=3)
    started = time.monotonic()
    try:
        with pytest.raises(
            ReplicasNotStarted, match=r"none of the 1 engine replicas started within 3 s.*2 CPU\(s\) each"
        ):
            engine.generate(["Q:1+1"], SamplingSettings(n=1, max_new_tokens=4, seed=1))
        assert time.monotonic() - started < 20 and engine.replicas == []
        engine.close()  # nothing left to close
    finally:
        for h in holders:
            ray.kill(h)


def test_a_replica_killed_mid_run_is_started_again_and_no_trace_is_lost_or_doubled(ray_cluster, untrained_model):
    """SIGKILL to one replica's process while the shards are being sampled (every replica is always busy with a
    shard, 25 of about half a second each here): Ray starts it again and asks it for its shard again; the
    completions equal a run without the kill."""
    import os
    import signal
    import threading
    import time

    import ray

    prompts = [p.prompt for p in PlaygroundTask().traffic(0, 400)]
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=32, seed=11)
    spec = EngineSpec("transformers", str(untrained_model), device="cpu", batch_size=16)
    calm = ReplicatedEngine(spec, 2, shard_prompts=16, cpus_per_replica=1)
    try:
        want = calm.generate(prompts, settings)  # about 7 s here
    finally:
        calm.close()
    engine = ReplicatedEngine(spec, 2, shard_prompts=16, cpus_per_replica=1)
    try:
        victim = ray.get(engine._started()[0].pid.remote())
        got: list = []
        run = threading.Thread(target=lambda: got.extend(engine.generate(prompts, settings)))
        run.start()
        time.sleep(1.0)  # the first shards are being sampled
        assert run.is_alive()
        os.kill(victim, signal.SIGKILL)
        run.join(timeout=240)
        assert not run.is_alive() and got == want
        assert ray.get(engine.replicas[0].pid.remote()) != victim  # a new process took its place
    finally:
        engine.close()
