"""Generation data-parallel over several engine replicas: Ray actors, one engine each (one per GPU on a GPU node,
`tensor_parallel` GPUs each for a model one GPU cannot hold).

The prompts are cut into fixed shards of `shard_prompts`; shard k is sampled with its own seed, derived from the
request's seed and k, by whichever replica is free. What comes back depends on the prompts, the settings and the
shard size, never on how many replicas there are or which one took a shard: one replica gives the same traces
as eight, for the same seeds. (`engine.replicas: 1` does not come here: the engine runs in the step's process
over all the prompts at once, which samples other traces; the cached benchmark evaluations tell the two apart,
EngineResource.identity.)

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


# A replica's process may die and be started again up to RESTARTS times in its life (each a model load); the
# shard it was sampling is asked again once (a shard that kills its replica every time fails the step on the
# second death rather than the fourth).
RESTARTS, SHARD_RETRIES = 3, 1


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

    def pid(self) -> int:
        """Its process (what a test kills)."""
        import os

        return os.getpid()


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
        start_timeout_s: float = 900,
    ) -> None:
        import ray

        if replicas < 1 or shard_prompts < 1:
            raise ValueError(f"engine.replicas ({replicas}) and engine.shard_prompts ({shard_prompts}) must be >= 1")
        ensure_ray(address)
        from flywheel_dagster.engines.transformers_engine import pick_device

        spec = replace(spec, device=pick_device(spec.device))  # "auto" decided here, where the GPUs are counted
        gpus = spec.tensor_parallel if spec.device == "cuda" else 0
        _check_capacity(replicas, cpus_per_replica, gpus)
        # A replica whose process dies (a preempted node, an OOM kill) is started again and its shard asked again
        # (RESTARTS, SHARD_RETRIES): a shard's completions depend on the shard and its seed alone, so none is lost or
        # doubled.
        actor = ray.remote(
            num_cpus=cpus_per_replica, num_gpus=gpus, max_restarts=RESTARTS, max_task_retries=SHARD_RETRIES
        )(_Replica)
        threads = max(1, int(cpus_per_replica)) if spec.device != "cuda" else 0
        self.spec = spec
        self.shard_prompts = shard_prompts
        self.start_timeout_s = start_timeout_s
        self.cpus_per_replica = cpus_per_replica
        self.replicas = [actor.remote(spec, threads) for _ in range(replicas)]
        self.ready = False  # whether the replicas that did not start are known and given back (_started)
        self.name = f"{spec.kind} x{replicas}"

    def _started(self) -> list:
        """The replicas whose engine loaded, waiting up to start_timeout_s for all of them. A cluster that cannot
        place them all (its GPUs taken, an autoscaler that does not add nodes) would otherwise hold the step
        forever on the shards given to a replica that never starts: those that started share the work (the
        traces are the same for any number of replicas), the others are given back. None started: an error that
        says what was asked for. A replica whose engine failed to load raises that error here."""
        import ray

        if not self.ready:
            ready = {a.__ray_ready__.remote(): a for a in self.replicas}
            done, pending = ray.wait(list(ready), num_returns=len(ready), timeout=self.start_timeout_s)
            try:
                ray.get(done)  # a load error (a missing model, too little memory) surfaces here (an ActorDiedError)
            except Exception:
                for ref in pending:  # never started: close() would wait on them
                    _kill(ready[ref])
                self.replicas = [ready[ref] for ref in done]
                raise
            if not done:
                for actor in self.replicas:  # none started: nothing to close, and asking them would wait
                    _kill(actor)
                self.replicas = []
                raise ReplicasNotStarted(
                    f"none of the {len(ready)} engine replicas started within {self.start_timeout_s:.0f} s: the Ray "
                    f"cluster could not place them ({_resources_asked(self.spec, self.cpus_per_replica)} each; it has "
                    f"{_resources_had()}). Lower engine.replicas or engine.tensor_parallel, or add nodes"
                )
            for ref in pending:
                _kill(ready[ref])
            self.replicas, self.ready = [ready[ref] for ref in done], True
            if pending:
                self.name = f"{self.spec.kind} x{len(done)} ({len(pending)} of {len(ready)} did not start)"
        return self.replicas

    def generate(self, prompts: list[str], settings: SamplingSettings) -> list[Completion]:
        """n completions per prompt, ordered by (prompt_index, sample_index), as one engine returns them."""
        from ray.util import ActorPool

        size = self.shard_prompts
        shards = [(k, start, prompts[start : start + size]) for k, start in enumerate(range(0, len(prompts), size))]
        pool = ActorPool(self._started())
        # As they finish, not in shard order: the ordered map gives a replica its next shard only when its last one's
        # turn comes, so while one replica restarts (a model load) the others would wait for it.
        done = pool.map_unordered(lambda a, s: a.generate.remote(s[0], s[1], s[2], settings), shards)
        return sorted((c for shard in done for c in shard), key=lambda c: (c.prompt_index, c.sample_index))

    def close(self) -> None:
        """Close every replica's engine and give its resources back; a replica that died (or never started) is
        killed all the same, and the error that ended it is not raised again here over the one being handled."""
        import ray

        closing = [r.close.remote() for r in self.replicas]
        if closing:  # all at once, a minute in all: one that died, never started or hangs is killed regardless
            ray.wait(closing, num_returns=len(closing), timeout=60)
        for r in self.replicas:
            _kill(r)
        self.replicas = []


class ReplicasNotStarted(RuntimeError):
    """No engine replica could be placed on the Ray cluster in time."""


def _resources_asked(spec: EngineSpec, cpus: float) -> str:
    return f"{spec.tensor_parallel} GPU(s)" if spec.device == "cuda" else f"{cpus:g} CPU(s)"


def _resources_had() -> str:
    import ray

    total = ray.cluster_resources()
    return f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs"


def _check_capacity(replicas: int, cpus: float, gpus: int) -> None:
    """On a cluster of this machine alone (no autoscaler adds nodes to it), replicas that cannot all be placed
    at once are refused before any starts: the ones left over would never start."""
    import ray

    total = ray.cluster_resources()
    if replicas * cpus <= total.get("CPU", 0) and replicas * gpus <= total.get("GPU", 0):
        return
    if cluster_is_local():
        need = f"{replicas * gpus} GPUs" if gpus else f"{replicas * cpus:g} CPUs"
        raise ValueError(
            f"engine.replicas {replicas} need {need} at once ({gpus or cpus:g} each), but the Ray cluster on this "
            f"machine has {_resources_had()}: lower engine.replicas (or engine.tensor_parallel)"
        )


def _kill(actor: Any) -> None:  # noqa: ANN401 - a Ray actor handle
    import ray

    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001, S110 - already gone
        pass
