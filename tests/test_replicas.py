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
