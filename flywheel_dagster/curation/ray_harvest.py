"""The harvest on Ray (`compute.engine: ray`): the per-trace work in Ray actors, the decisions in order here.

Each batch of the quarter's traces goes to one of `workers` actors, which runs `RowWorker.work` on it (verdicts,
contamination, PII redaction, filters, exact-dedup keys, MinHash signatures: the bulk of the harvest's time,
nothing that depends on other traces). The results come back in the quarter's order and the driver's
`Harvester.decide` takes them one batch after another: exact and near duplicates (the first trace in the
quarter's order survives), the per-problem cap and the monitors. So `ray` writes exactly the rows and labels
`local` writes on the same input (tests/test_ray_harvest.py). The worker sends the batch's harvested rows as
Arrow columns and the monitors' keys as integers, so the driver never turns the texts into Python objects: its
share is about 3 us a trace in the exact pass (`benchmarks/harvest.py --engine ray` prints it), the ceiling of
one driver with any number of workers.

- Memory: an actor holds one batch and its bounded memos; at most two batches per actor are in flight.
- A worker that dies is restarted and its batch done again (actors restart without limit and retry a call up to
  RETRIES times, so a batch that kills its worker every time fails the step instead of hanging it); the work is
  a pure function of the batch, so nothing is lost or written twice.
- What does not scale out yet: the decisions run in the driver, which holds the quarter's dedup keys,
  per-problem counts and LSH bands as the local harvest does: in bounded memory (KeyStore: 8 bytes a key,
  spilled to disk past dedup.state_memory_mb), but in one process.

`ray.init()` starts a local cluster the first time (on a laptop, in the tests); `compute.ray_address` (or
RAY_ADDRESS) joins a running one, KubeRay included.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.curation.harvest import Harvester, RowWork
from flywheel_dagster.traces.lake import Lake, RowGroup

RETRIES = 3  # a batch done again on a restarted worker at most this many times


class _RowActor:
    """One worker: a RowWorker built once from the config, then batch after batch."""

    def __init__(self, config: dict[str, Any], benchmark_prompts: list[str]) -> None:
        from flywheel_dagster.config import FlywheelConfig
        from flywheel_dagster.curation.harvest import RowWorker
        from flywheel_dagster.tasks import load_task

        pa.set_cpu_count(1)  # one core per actor: the workers are the parallelism
        cfg = FlywheelConfig.model_validate(config)
        self.rows = RowWorker(load_task(cfg), cfg.harvest, benchmark_prompts)
        self.near = cfg.harvest.dedup.near_duplicates

    def work(self, batch: pa.Table | RowGroup) -> RowWork:
        table = batch.read() if isinstance(batch, RowGroup) else batch
        return self.rows.work(table, signatures=self.near)

    def pid(self) -> int:
        import os

        return os.getpid()


def start_workers(
    cfg: FlywheelConfig, benchmark_prompts: list[str], workers: int, address: str = ""
) -> list[Any]:  # Ray actor handles
    """`workers` actors (0: one per CPU the cluster has), starting a local Ray cluster if none is running. They
    get the config with its paths absolute (a worker's working directory is the cluster's, not this one's)."""
    import ray

    from flywheel_dagster.engines.replicas import ensure_ray

    ensure_ray(address)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=RETRIES)(_RowActor)
    config = cfg.with_absolute_paths().model_dump(mode="json")
    return [actor.remote(config, benchmark_prompts) for _ in range(workers)]


def workers_read(lake: Lake) -> bool:
    """Whether the workers can open the lake's files themselves: a remote filesystem (s3://, gs://), or a local
    folder with every node of the Ray cluster on this machine. Then they are sent row groups by name
    (lake.row_groups), and the driver neither reads nor sends the traces."""
    from flywheel_dagster.engines.replicas import cluster_is_local

    if "://" in lake.location and not lake.location.startswith("file://"):
        return True
    return cluster_is_local()


def harvest_batches(
    harvester: Harvester, batches: Iterable[pa.Table | pa.RecordBatch | RowGroup], actors: list[Any]
) -> Iterator[pa.Table]:
    """The harvested rows of each batch, in the batches' order, the per-trace work done by `actors`. A batch is
    rows, or a RowGroup that the worker reads itself."""
    import ray

    in_flight: deque[Any] = deque()
    limit = 2 * len(actors)
    for k, batch in enumerate(batches):
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        in_flight.append(actors[k % len(actors)].work.remote(table))
        if len(in_flight) >= limit:
            yield harvester.decide(ray.get(in_flight.popleft()))
    while in_flight:
        yield harvester.decide(ray.get(in_flight.popleft()))


def stop_workers(actors: list[Any]) -> None:
    import ray

    for a in actors:
        ray.kill(a)
