"""Generation data-parallel over several engine replicas: Ray actors, one engine each (one per GPU on a GPU node,
`tensor_parallel` GPUs each for a model one GPU cannot hold).

The prompts are cut into fixed shards of `shard_prompts`; shard k is sampled with its own seed, derived from the
request's seed and k, by whichever replica is free. What comes back depends on the prompts, the settings and the
shard size, never on how many replicas there are or which one took a shard: one replica gives the same traces
as eight, for the same seeds.

    engine = ReplicatedEngine(EngineSpec("vllm", "/models/champion", device="cuda"), replicas=4)
    completions = engine.generate(prompts, SamplingSettings(n=4, seed=7))   # as any InferenceEngine

Ray starts a local cluster on first use (`ray.init()`), or joins the cluster at `address` (`compute.ray_address`,
or RAY_ADDRESS; on Kubernetes a KubeRay cluster).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from flywheel_dagster.engines.base import Completion, SamplingSettings


@dataclass(frozen=True)
class EngineSpec:
    """What a replica loads: plain values, so that it crosses to a Ray worker."""

    kind: str
    model_dir: str
    device: str = "auto"
    batch_size: int = 256
    max_model_len: int | None = None
    kv_cache_bytes: int | None = None
    tensor_parallel: int = 1

    def load(self) -> Any:  # noqa: ANN401 - an InferenceEngine
        from flywheel_dagster.engines.transformers_engine import load_engine

        return load_engine(
            self.kind,
            self.model_dir,
            device=self.device,
            batch_size=self.batch_size,
            max_model_len=self.max_model_len,
            kv_cache_bytes=self.kv_cache_bytes,
            tensor_parallel=self.tensor_parallel,
        )


def shard_seed(seed: int, shard: int) -> int:
    """Shard `shard`'s sampling seed: a function of the request's seed and the shard alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{shard}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def ensure_ray(address: str = "") -> None:
    """Join the Ray cluster at `address` (else RAY_ADDRESS), or start a local one, unless this process is in one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, configure_logging=False)


def cluster_is_local() -> bool:
    """Whether every live node of the Ray cluster this process is in is this machine (so Ray workers can open
    this machine's files: log files, a local lake)."""
    import ray

    here = ray.util.get_node_ip_address()
    return all(node["NodeManagerAddress"] == here for node in ray.nodes() if node["Alive"])


class _Replica:
    """One engine in a Ray actor; generates one shard at a time."""

    def __init__(self, spec: EngineSpec, threads: int) -> None:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.engine = spec.load()

    def generate(self, shard: int, offset: int, prompts: list[str], settings: SamplingSettings) -> list[Completion]:
        out = self.engine.generate(prompts, replace(settings, seed=shard_seed(settings.seed, shard)))
        return [replace(c, prompt_index=c.prompt_index + offset) for c in out]

    def close(self) -> None:
        self.engine.close()


class ReplicatedEngine:
    """An InferenceEngine whose work is spread over `replicas` engine replicas, each a Ray actor."""

    name = "replicated"

    def __init__(
        self,
        spec: EngineSpec,
        replicas: int,
        shard_prompts: int = 256,
        address: str = "",
        cpus_per_replica: float = 1,
    ) -> None:
        import ray

        if replicas < 1 or shard_prompts < 1:
            raise ValueError(f"engine.replicas ({replicas}) and engine.shard_prompts ({shard_prompts}) must be >= 1")
        ensure_ray(address)
        from flywheel_dagster.engines.transformers_engine import pick_device

        spec = replace(spec, device=pick_device(spec.device))  # "auto" decided here, where the GPUs are counted
        gpus = spec.tensor_parallel if spec.device == "cuda" else 0
        actor = ray.remote(num_cpus=cpus_per_replica, num_gpus=gpus)(_Replica)
        threads = max(1, int(cpus_per_replica)) if spec.device != "cuda" else 0
        self.spec = spec
        self.shard_prompts = shard_prompts
        self.replicas = [actor.remote(spec, threads) for _ in range(replicas)]
        self.name = f"{spec.kind} x{replicas}"

    def generate(self, prompts: list[str], settings: SamplingSettings) -> list[Completion]:
        """n completions per prompt, ordered by (prompt_index, sample_index), as one engine returns them."""
        from ray.util import ActorPool

        size = self.shard_prompts
        shards = [(k, start, prompts[start : start + size]) for k, start in enumerate(range(0, len(prompts), size))]
        pool = ActorPool(self.replicas)
        done = pool.map(lambda a, s: a.generate.remote(s[0], s[1], s[2], settings), shards)  # in shard order
        return [c for shard in done for c in shard]

    def close(self) -> None:
        import ray

        ray.get([r.close.remote() for r in self.replicas])
        for r in self.replicas:
            ray.kill(r)
        self.replicas = []
