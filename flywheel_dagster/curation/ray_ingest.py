"""The ingest on Ray (`compute.engine: ray`): the quarter's log files parsed in Ray actors, written here in order.

The ingest is the harvest stage's largest cost on one core (about 12 us a playground trace: JSON, the record
checks, the rows into Arrow), and each line is ingested on its own, so it scales out by pieces of the files:
the driver cuts every big uncompressed JSON Lines file at line ends into pieces of about `piece_bytes`
(Ingestor.pieces; gzip and Parquet files stay whole), each actor ingests the pieces it is given with the same
Ingestor code as the local ingest, and the driver takes the pieces' tables back in the files' order and writes
them. A piece knows how many lines come before it, so line numbers in the quarantine, and the trace ids of
records without a request_id (keyed by file and line), are those of the whole file: `ray` writes exactly the
traces, quarantine and counts `local` writes (tests/test_ray_ingest.py).

- The actors open the files themselves, so every Ray node must see the paths: a cluster on this machine
  (engines.replicas.cluster_is_local); elsewhere the asset ingests locally and says so in its metadata.
- Memory: an actor holds one piece's rows; at most two pieces per actor are in flight.
- A worker that dies is restarted and its piece done again (a pure function of the file's bytes): nothing
  is lost or written twice.
- The driver's share is cutting the files (reading them once) and writing the Parquet: about 2 us a trace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from flywheel_dagster.curation.ingest import Ingestor, IngestStats, Piece, Settings

PIECE_BYTES = 8 << 20  # about 16,000 playground records or 4,000 GSM8K ones a piece


class _IngestActor:
    """One worker: the task built once from the config (its lookups memoized across pieces), then piece after
    piece."""

    def __init__(self, config: dict[str, Any], settings: Settings, batch_rows: int) -> None:
        from flywheel_dagster.config import FlywheelConfig
        from flywheel_dagster.tasks import load_task

        pa.set_cpu_count(1)  # one core per actor: the workers are the parallelism
        self.ingestor = Ingestor(load_task(FlywheelConfig.model_validate(config)), settings, batch_rows)

    def ingest(self, piece: Piece) -> tuple[list[tuple[pa.Table, pa.Table]], IngestStats]:
        self.ingestor.stats = IngestStats()
        return list(self.ingestor.piece_tables([piece])), self.ingestor.stats

    def pid(self) -> int:
        import os

        return os.getpid()


def start_workers(
    config: dict[str, Any], settings: Settings, workers: int, address: str = "", batch_rows: int = 8192
) -> list[Any]:  # Ray actor handles
    """`workers` ingest actors (0: one per CPU the cluster has), starting a local Ray cluster if none is running."""
    import ray

    from flywheel_dagster.engines.replicas import ensure_ray

    ensure_ray(address)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(_IngestActor)
    return [actor.remote(config, settings, batch_rows) for _ in range(workers)]


def ingest_tables(
    ingestor: Ingestor, files: list[str], actors: list[Any], piece_bytes: int = PIECE_BYTES
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Ingestor.tables(files), the pieces ingested by `actors`: the same (traces, quarantine) tables in the same
    order (cut at other places), and `ingestor.stats` counts as if it had read the files itself."""
    import ray

    in_flight: deque[Any] = deque()
    limit = 2 * len(actors)

    def take() -> Iterator[tuple[pa.Table, pa.Table]]:
        tables, stats = ray.get(in_flight.popleft())
        _add(ingestor.stats, stats)
        yield from tables

    for k, piece in enumerate(ingestor.pieces(files, piece_bytes)):
        in_flight.append(actors[k % len(actors)].ingest.remote(piece))
        if len(in_flight) >= limit:
            yield from take()
    while in_flight:
        yield from take()


def _add(total: IngestStats, piece: IngestStats) -> None:
    total.lines_read += piece.lines_read
    total.lines_ingested += piece.lines_ingested
    total.traces += piece.traces
    total.quarantined.update(piece.quarantined)


def stop_workers(actors: list[Any]) -> None:
    import ray

    for a in actors:
        ray.kill(a)
