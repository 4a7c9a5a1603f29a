"""The ingest on Ray (`compute.engine: ray`): the quarter's log files parsed in Ray actors, written here in order.

The ingest is the harvest stage's largest cost on one core (about 12 us a playground trace: JSON, the record
checks, the rows into Arrow), and each line is ingested on its own, so it scales out by pieces of the files:
the driver cuts every big uncompressed JSON Lines file at line ends into pieces of about `piece_bytes`
(Ingestor.pieces; a big gzip file is inflated here into such pieces, in a temporary folder; Parquet files stay
whole), each actor ingests the pieces it is given with the same Ingestor code as the local ingest, and the
driver takes the pieces' tables back in the files' order and writes them. A piece knows how many lines come
before it, so line numbers in the quarantine, and the trace ids of records without a request_id (keyed by file
and line), are those of the whole file: `ray` writes exactly the traces, quarantine and counts `local` writes
(tests/test_ray_harvest.py).

- The actors open the files themselves (by absolute path: a worker's working directory is the cluster's), so
  every Ray node must see them: a cluster on this machine (engines.replicas.cluster_is_local); elsewhere the
  asset ingests in its own process and says so in its metadata.
- Memory: a plain piece's rows come back in memory (about piece_bytes of them); a Parquet file larger than
  piece_bytes / 8 on disk, which is not cut, is written by its actor to a spill file (Parquet, lz4) that this
  process streams back a batch at a time and removes. At most IN_FLIGHT (4) pieces per actor are in flight,
  which bounds the disk an inflated gzip file's pieces take too: each holds at most piece_bytes and one line of
  at most max_record_bytes (a longer line is never written out), and is removed once ingested.
- A worker that dies is restarted and its piece done again (a pure function of the file's bytes): nothing
  is lost or written twice. A piece that kills its worker RETRIES + 1 times fails the step, not hangs it.
- The driver's share is cutting the files (reading them once), inflating the gzip ones, and writing the
  Parquet: about 2 us a trace.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.curation.ingest import QUARANTINE_SCHEMA, Ingestor, IngestStats, Piece, Settings
from flywheel_dagster.curation.ingest.ingestor import _size
from flywheel_dagster.traces.schema import TRACE_SCHEMA

PIECE_BYTES = 8 << 20  # about 16,000 playground records or 4,000 GSM8K ones a piece
RETRIES = 3  # a piece done again on a restarted worker at most this many times
# Pieces given to each actor ahead of the one the driver waits for. The results come back in the files' order, so
# while a big piece is at the head the others must find work queued: on twelve gzip files of 60,000 and 10,000
# lines, each then one piece, two workers ingested 58,000-64,000 traces/s with two a worker (one worker: 63,000)
# and 78,000-81,000 with four; six gave no more, nor did giving each piece to the least busy actor.
IN_FLIGHT = 4


class _IngestActor:
    """One worker: the task built once from the config (its lookups memoized across pieces), then piece after
    piece."""

    def __init__(self, config: dict[str, Any], settings: Settings, batch_rows: int) -> None:
        from flywheel_dagster.tasks import load_task

        pa.set_cpu_count(1)  # one core per actor: the workers are the parallelism
        self.ingestor = Ingestor(load_task(FlywheelConfig.model_validate(config)), settings, batch_rows)

    def ingest(
        self, piece: Piece, spill: str | None = None
    ) -> tuple[list[tuple[pa.Table, pa.Table]] | str, IngestStats]:
        """The piece's (traces, quarantine) tables, or with `spill` the path they were written to (spill + .traces,
        spill + .quarantine), and the piece's counts."""
        self.ingestor.stats = IngestStats()
        tables = self.ingestor.piece_tables([piece])
        if spill is None:
            return list(tables), self.ingestor.stats
        with (
            pq.ParquetWriter(spill + ".traces", TRACE_SCHEMA, compression="lz4") as traces,
            pq.ParquetWriter(spill + ".quarantine", QUARANTINE_SCHEMA, compression="lz4") as quarantine,
        ):
            for t, q in tables:
                traces.write_table(t)
                quarantine.write_table(q)
        return spill, self.ingestor.stats

    def pid(self) -> int:
        return os.getpid()


def start_workers(
    cfg: FlywheelConfig, settings: Settings, workers: int, address: str = "", batch_rows: int = 8192
) -> list[Any]:  # Ray actor handles
    """`workers` ingest actors (0: one per CPU the cluster has), starting a local Ray cluster if none is running.
    They get the config with its paths absolute (a worker's working directory is the cluster's, not this one's);
    the pieces name the files by absolute path too (Piece.opened)."""
    import ray

    from flywheel_dagster.engines.replicas import ensure_ray

    ensure_ray(address)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=RETRIES)(_IngestActor)
    config = cfg.with_absolute_paths().model_dump(mode="json")
    return [actor.remote(config, settings, batch_rows) for _ in range(workers)]


def ingest_tables(
    ingestor: Ingestor, files: list[str], actors: list[Any], piece_bytes: int = PIECE_BYTES
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Ingestor.tables(files), the pieces ingested by `actors`: the same (traces, quarantine) tables in the same
    order (cut at other places), and `ingestor.stats` counts as if it had read the files itself."""
    import ray

    in_flight: deque[Any] = deque()
    limit = IN_FLIGHT * len(actors)
    spills = tempfile.mkdtemp(prefix="flywheel-ingest-spill-")

    def take() -> Iterator[tuple[pa.Table, pa.Table]]:
        call, piece = in_flight.popleft()
        tables, stats = ray.get(call)
        if os.path.dirname(piece.opened) == spills:  # a piece of an inflated gzip file: done with
            os.unlink(piece.opened)
        _add(ingestor.stats, stats)
        if not isinstance(tables, str):
            yield from tables
            return
        for suffix, schema in ((".traces", TRACE_SCHEMA), (".quarantine", QUARANTINE_SCHEMA)):
            for batch in pq.ParquetFile(tables + suffix).iter_batches(batch_size=ingestor.batch_rows):
                part = pa.Table.from_batches([batch], schema)
                yield (
                    (part, QUARANTINE_SCHEMA.empty_table())
                    if schema is TRACE_SCHEMA
                    else (TRACE_SCHEMA.empty_table(), part)
                )
            os.unlink(tables + suffix)

    try:
        for k, piece in enumerate(ingestor.pieces(files, piece_bytes, inflate_into=spills)):
            spill = os.path.join(spills, f"piece-{k:08d}") if _unbounded(piece, piece_bytes) else None
            in_flight.append((actors[k % len(actors)].ingest.remote(piece, spill), piece))
            if len(in_flight) >= limit:
                yield from take()
        while in_flight:
            yield from take()
    finally:
        shutil.rmtree(spills, ignore_errors=True)


def _unbounded(piece: Piece, piece_bytes: int) -> bool:
    """A whole gzip or Parquet file whose rows may not fit a message: larger than piece_bytes / 8 on disk."""
    if piece.source.endswith(".jsonl"):  # cut into pieces of about piece_bytes (a gzip file's inflated), or small
        return False
    return _size(piece.source) > piece_bytes // 8  # 0 for a file that cannot be read: its worker quarantines it


def _add(total: IngestStats, piece: IngestStats) -> None:
    total.lines_read += piece.lines_read
    total.lines_ingested += piece.lines_ingested
    total.traces += piece.traces
    total.contexts_unsearched += piece.contexts_unsearched
    total.quarantined.update(piece.quarantined)


def stop_workers(actors: list[Any]) -> None:
    import ray

    for a in actors:
        ray.kill(a)
