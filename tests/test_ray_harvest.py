"""The harvest stage on a real local Ray cluster (compute.engine: ray): the log ingest and the harvest write
exactly what the local ones write on the same input (the ingest's quarantine and counts, the harvest's near dedup
included), and a worker killed mid-run is restarted without losing or duplicating a row."""

from __future__ import annotations

import codecs
import gzip
import os
import signal
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from make_harvest_reference import OUT, input_path
from test_harvest_reference import first_difference

from flywheel_dagster.config import build_config
from flywheel_dagster.curation import ingest, loggen, ray_harvest, ray_ingest
from flywheel_dagster.curation.harvest import Harvester
from flywheel_dagster.tasks import load_task


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _batches(tmp_path, task_name: str) -> list[pa.Table]:
    from make_harvest_reference import END, START, make_task

    path = tmp_path / f"{task_name}.input.jsonl"
    path.write_bytes(gzip.decompress(input_path(task_name).read_bytes()))
    ing = ingest.Ingestor(
        make_task(task_name), ingest.Settings("2026-01-01", ingest.Window(START, END)), batch_rows=256
    )
    return [t for t, _ in ing.tables([str(path)])]


def _config(task_name: str):
    model = {} if task_name == "playground" else {"model": {"kind": "hf", "hf_path": "unused-by-the-harvest"}}
    return build_config({"task": {"source": task_name}, **model, "harvest": {"dedup": {"near_duplicates": True}}})


@pytest.mark.parametrize("task_name", ["playground", "gsm8k"])
def test_ray_writes_the_rows_and_labels_local_writes(ray_cluster, tmp_path, task_name):
    cfg = _config(task_name)
    task = load_task(cfg)
    prompts = [p.prompt for p in task.benchmark(20, 0)]
    batches = _batches(tmp_path, task_name)
    local = Harvester(task, cfg.harvest, prompts)
    want = pa.concat_tables([local.process(b) for b in batches])
    actors = ray_harvest.start_workers(cfg, prompts, 2)
    try:
        remote = Harvester(task, cfg.harvest, prompts)
        got = pa.concat_tables(list(ray_harvest.harvest_batches(remote, batches, actors)))
    finally:
        ray_harvest.stop_workers(actors)
    assert got.equals(want)
    assert remote.stats.as_counts() == local.stats.as_counts() and remote.stats.pii == local.stats.pii
    assert remote.monitors.result(None) == local.monitors.result(None)
    assert remote.stats.as_counts()["drop/near_duplicate"] > 0  # the case that needs the quarter's order
    assert (OUT / f"{task_name}.near.harvested.parquet").exists()


def test_a_worker_killed_mid_run_is_restarted_and_no_row_is_lost_or_doubled(ray_cluster, tmp_path):
    import ray

    cfg = _config("playground")
    task = load_task(cfg)
    prompts = [p.prompt for p in task.benchmark(20, 0)]
    batches = _batches(tmp_path, "playground")
    local = Harvester(task, cfg.harvest, prompts)
    want = pa.concat_tables([local.process(b) for b in batches])
    actors = ray_harvest.start_workers(cfg, prompts, 2)
    try:
        victim = ray.get(actors[1].pid.remote())
        harvester = Harvester(task, cfg.harvest, prompts)
        out = []
        for k, table in enumerate(ray_harvest.harvest_batches(harvester, batches, actors)):
            out.append(table)
            if k == 2:
                os.kill(victim, signal.SIGKILL)  # batches are in flight on it
        assert ray.get(actors[1].pid.remote()) != victim  # it really died and came back
    finally:
        ray_harvest.stop_workers(actors)
    got = pa.concat_tables(out)
    assert got.num_rows == want.num_rows == sum(b.num_rows for b in batches)
    assert got.equals(want), first_difference(got, want)


def test_the_harvested_traces_asset_takes_the_engine_from_the_config(ray_cluster, tmp_path):
    """The asset's choice of engine (assets/harvest.py): compute.engine ray gives what local gives, the workers
    reading the reasoning_traces partition's row groups themselves (the cluster is on this machine)."""
    from assets.harvest import _harvested
    from flywheel_dagster.traces.lake import Lake
    from flywheel_dagster.traces.schema import TRACE_SCHEMA

    batches = _batches(tmp_path, "playground")
    lake = Lake(str(tmp_path / "lake"))
    with lake.open_partition("reasoning_traces", "2026-01-01") as part:
        writer = part.parquet("part-00000.parquet", TRACE_SCHEMA)
        for b in batches:
            writer.write_table(b)
    groups = lake.row_groups("reasoning_traces", "2026-01-01")
    assert [g.rows for g in groups] == [b.num_rows for b in batches] and ray_harvest.workers_read(lake)
    assert pa.concat_tables([g.read() for g in groups]).equals(pa.concat_tables(batches).cast(TRACE_SCHEMA))
    out = {}
    for engine in ("local", "ray"):
        cfg = build_config(
            {"compute": {"engine": engine, "ray_workers": 2}, "harvest": {"dedup": {"near_duplicates": True}}}
        )
        task = load_task(cfg)
        prompts = [p.prompt for p in task.benchmark(20, 0)]
        harvester = Harvester(task, cfg.harvest, prompts)
        with _harvested(cfg, harvester, prompts) as run:
            out[engine] = pa.concat_tables(list(run(lake, "2026-01-01")))
    assert out["ray"].num_rows == sum(b.num_rows for b in batches)
    assert out["ray"].equals(out["local"]), first_difference(out["ray"], out["local"])


# The ingest, cut into pieces -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.integers(0, 3000), max_size=40),
    newline_at_end=st.booleans(),
    piece_bytes=st.integers(1, 2500),
    block_bytes=st.one_of(st.integers(1, 4096), st.just(1 << 20)),
)
def test_pieces_cut_a_file_at_line_ends_and_count_the_lines_before(
    tmp_path_factory, lines, newline_at_end, piece_bytes, block_bytes
):
    """_line_pieces reads the file in blocks of block_bytes (1 MiB in use; small ones here so that cuts fall in
    every place relative to the blocks)."""
    from flywheel_dagster.curation.ingest.ingestor import _line_pieces

    data = b"\n".join(b"x" * n for n in lines) + (b"\n" if newline_at_end and lines else b"")
    path = tmp_path_factory.mktemp("pieces") / "log.jsonl"
    path.write_bytes(data)
    pieces = list(_line_pieces(str(path), piece_bytes, block_bytes))
    assert pieces[0].start == 0 and pieces[-1].stop is None
    assert {p.path for p in pieces} == {str(path)} and {p.opened for p in pieces} == {os.path.abspath(path)}
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert a.stop == b.start and data[a.stop - 1 : a.stop] == b"\n"  # contiguous, cut after a line end
        assert a.stop - a.start > piece_bytes  # a piece is never cut short of piece_bytes ...
        assert b"\n" not in data[a.start + piece_bytes : a.stop - 1]  # ... and ends at the first line end after it
    assert pieces[-1].start < len(data) or len(pieces) == 1  # the last piece is not empty, unless the file is
    for p in pieces:
        assert p.first_line == data[: p.start].count(b"\n")


def test_a_read_error_while_cutting_is_quarantined_as_in_a_local_ingest(tmp_path, monkeypatch):
    """An I/O error in the middle of a log file (a failing disk, a stale network mount) while the driver cuts it:
    the pieces before it stand, the rest of the file is one piece whose worker meets the error and quarantines
    it (unreadable_file), as the local ingest does; nothing fails the step."""
    import builtins
    import errno

    from flywheel_dagster.curation.ingest import ingestor as ingestor_module

    path = tmp_path / "gateway.jsonl"
    task = load_task(_config("playground"))
    from make_harvest_reference import END, START

    records = loggen.synthetic_records(task, task.traffic(0, 40), 6000, START, END, seed=8)  # 3 MB
    loggen.write_jsonl(path, records)
    damage = path.stat().st_size * 2 // 3

    class Failing:
        def __init__(self, name, mode="r", *args, **kwargs):
            self.f = builtins.open(name, mode, *args, **kwargs)

        def read(self, n=-1):
            if self.f.tell() + (n if n >= 0 else 1 << 62) > damage:
                raise OSError(errno.EIO, "Input/output error")
            return self.f.read(n)

        def readinto(self, buf):
            if self.f.tell() + len(buf) > damage:
                raise OSError(errno.EIO, "Input/output error")
            return self.f.readinto(buf)

        def readline(self, limit=-1):
            if self.f.tell() + (limit if limit >= 0 else 1 << 62) > damage:
                raise OSError(errno.EIO, "Input/output error")
            return self.f.readline(limit)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ingestor_module, "open", Failing, raising=False)
    for ingestor, tables in (
        (local := ingest.Ingestor(task, _settings()), lambda: local.tables([str(path)])),
        (
            planner := ingest.Ingestor(task, _settings()),
            lambda: planner.piece_tables(planner.pieces([str(path)], 50_000)),
        ),
    ):
        traces, quarantine, stats = _ingested(ingestor, tables())
        assert quarantine.column("reason").to_pylist() == ["unreadable_file"]
        assert "Input/output error" in quarantine.column("detail")[0].as_py()
        assert 2000 < stats["traces"] < 6000 and stats["lines_read"] == stats["lines_ingested"] + 1
    assert len(list(planner.pieces([str(path)], 50_000))) > 10  # the file was cut before the damage (2 MB)


def _messy_logs(tmp_path) -> list[str]:
    """A quarter's log folder with what the ingest meets: every bad-line reason, lines longer than the size limit,
    blank lines, a byte order mark, records without a request id (their trace ids come from file and line), no
    newline at the end, a gzip file, a truncated one, a Parquet file and a file of another kind."""
    from make_harvest_reference import END, START

    task = load_task(_config("playground"))
    records = list(loggen.synthetic_records(task, task.traffic(0, 40), 700, START, END, seed=7))
    for k, r in enumerate(records[100:130]):  # requests with other turns, naming a phone number (context_pii)
        r["request"]["messages"][:0] = [
            {"role": "system", "content": f"Desk {k % 3}. Tel.: 06 12 34 56 7{k % 3}"},
            {"role": "user", "content": f"Earlier question {k}"},
            {"role": "assistant", "content": "A:1"},
        ]
    logs = tmp_path / "logs"
    a = logs / "a.jsonl"
    loggen.write_jsonl(a, records[:400], broken_every=9, oversized_bytes=6000)
    no_id = loggen.record("Q:1+2", "A:3", reasoning="2+1=3:3", timestamp=START + timedelta(days=3))
    with a.open("ab") as f:
        f.write(b"\n\n" + orjson.dumps(no_id) + b"\n" + orjson.dumps({**no_id, "timestamp": "2025-12-31T23:59:59Z"}))
        f.write(b"\n" + b"\n".join(orjson.dumps(r) for r in records[400:450]))
    a.write_bytes(codecs.BOM_UTF8 + a.read_bytes())
    b = [orjson.dumps(r) + b"\n" for r in records[450:550]]
    b[40:40] = [b'{"user_id": "u-9", "note": "' + b"x" * 6000 + b'"}\n']  # over max_record_bytes (4000)
    (logs / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(b)))
    cut = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records[550:650]))
    (logs / "c.jsonl.gz").write_bytes(cut[: len(cut) // 2])
    flipped = bytearray(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records[600:700])))
    flipped[len(flipped) // 2] ^= 0x10  # damage inside the deflate stream: zlib.error, not a truncation
    (logs / "f.jsonl.gz").write_bytes(bytes(flipped))
    traces = [t for t, _ in ingest.Ingestor(task, _settings()).tables([str(a)])]
    pq.write_table(pa.concat_tables(traces).slice(0, 30), logs / "d.parquet")
    loggen.write_jsonl(logs / "e.jsonl", [{**r, "request_id": None} for r in records[650:]], broken_every=5)
    (logs / "notes.txt").write_text("not a log")
    return ingest.find_log_files([str(logs)])


def _settings() -> ingest.Settings:
    from make_harvest_reference import END, START

    return ingest.Settings("2026-01-01", ingest.Window(START, END), max_record_bytes=4000)


def _ingested(ingestor: ingest.Ingestor, tables) -> tuple[pa.Table, pa.Table, dict]:
    tables = list(tables)
    return (
        pa.concat_tables([t for t, _ in tables]),
        pa.concat_tables([q for _, q in tables]),
        ingestor.stats.as_metadata(),
    )


def test_pieces_ingest_what_the_whole_files_ingest(tmp_path):
    task = load_task(_config("playground"))
    files = _messy_logs(tmp_path)
    local = ingest.Ingestor(task, _settings(), batch_rows=64)
    want = _ingested(local, local.tables(files))
    found = [c for c in want[0].column("context_pii").to_pylist() if c is not None]
    assert len(found) > 20 and set(found) == {f'[["PHONE", "06 12 34 56 7{k}"]]' for k in range(3)}
    planner, worker = ingest.Ingestor(task, _settings()), ingest.Ingestor(task, _settings(), batch_rows=64)
    pieces = list(planner.pieces(files, 3000))
    assert len(pieces) > 3 * len(files)  # the two big files are cut, the lines of 6,000 bytes span pieces
    traces, quarantine, _ = _ingested(worker, worker.piece_tables(pieces))
    worker.stats.files, worker.stats.files_skipped = planner.stats.files, planner.stats.files_skipped
    assert traces.equals(want[0]), first_difference(traces, want[0])
    assert quarantine.equals(want[1]) and worker.stats.as_metadata() == want[2]
    # The gzip files inflated here into plain pieces (their lines spread over the workers): the same again,
    # the damaged ones included (a truncated file, a flipped bit).
    inflated = tmp_path / "inflated"
    inflated.mkdir()
    planner, worker = ingest.Ingestor(task, _settings()), ingest.Ingestor(task, _settings(), batch_rows=64)
    pieces = list(planner.pieces(files, 3000, inflate_into=str(inflated)))
    damaged = {
        Path(p.path).name: p.tail_entry[1] for p in pieces if p.tail_entry and p.tail_entry[0] == "unreadable_file"
    }
    assert set(damaged) == {"c.jsonl.gz", "f.jsonl.gz"} and damaged["c.jsonl.gz"].startswith("EOFError")
    assert damaged["f.jsonl.gz"].startswith("error: ")  # zlib.error
    (long,) = [p for p in pieces if p.tail_entry and p.tail_entry[0] == "oversized_record"]
    assert long.path.endswith("b.jsonl.gz") and long.tail_entry[1] == "6030 bytes > max_record_bytes 4000"
    assert os.path.getsize(long.opened) < 3000 + 4000  # the long line is never written out
    assert sum(p.path.endswith("b.jsonl.gz") for p in pieces) > 3  # a whole gzip file, cut as a plain one is
    traces, quarantine, _ = _ingested(worker, worker.piece_tables(pieces))
    worker.stats.files, worker.stats.files_skipped = planner.stats.files, planner.stats.files_skipped
    assert traces.equals(want[0]), first_difference(traces, want[0])
    assert quarantine.equals(want[1]) and worker.stats.as_metadata() == want[2]
    reasons = set(quarantine.column("reason").to_pylist())
    assert {"oversized_record", "unreadable_file", "bad_json", "outside_window"} <= reasons
    assert (
        want[2]["files_skipped"] == 1
        and want[2]["lines_read"] == want[2]["lines_ingested"] + want[2]["lines_quarantined"]
    )


def test_ray_ingest_writes_what_local_ingest_writes_and_survives_a_killed_worker(ray_cluster, tmp_path, monkeypatch):
    """Relative paths, as a config gives them: this process works in another folder than the Ray workers (which
    started where the cluster did), so the pieces and the workers' config must name the files absolutely."""
    import ray

    _messy_logs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert os.getcwd() != ray.get(ray.remote(lambda: os.getcwd()).remote())  # the workers' folder is another one
    cfg = build_config({"ingest": {"paths": ["logs"]}, "traffic": {"source": "logs"}})
    task = load_task(cfg)
    files = ingest.find_log_files(cfg.ingest.paths)
    assert files and not os.path.isabs(files[0])
    local = ingest.Ingestor(task, _settings(), batch_rows=64)
    want = _ingested(local, local.tables(files))
    pieces = list(ingest.Ingestor(task, _settings()).pieces(files, 3000))
    assert {p.path for p in pieces if ray_ingest._unbounded(p, 3000)} == {  # whole files, through spill files
        "logs/b.jsonl.gz", "logs/c.jsonl.gz", "logs/d.parquet", "logs/f.jsonl.gz",
    }  # fmt: skip
    actors = ray_ingest.start_workers(cfg, _settings(), 2, batch_rows=64)
    try:
        remote = ingest.Ingestor(task, _settings(), batch_rows=64)
        got = _ingested(remote, ray_ingest.ingest_tables(remote, files, actors, piece_bytes=3000))
        assert got[0].equals(want[0]), first_difference(got[0], want[0])
        assert got[1].equals(want[1]) and got[2] == want[2]

        # A call in flight on a worker that dies is done again on the restarted worker.
        whole = replace(pieces[0], start=0, stop=None, first_line=0)  # logs/a.jsonl, some 0.2 s of work
        victim = ray.get(actors[1].pid.remote())
        call = actors[1].ingest.remote(whole)
        os.kill(victim, signal.SIGKILL)
        tables, stats = ray.get(call)
        assert ray.get(actors[1].pid.remote()) != victim  # it really died and came back
        alone = ingest.Ingestor(task, _settings(), batch_rows=64)
        assert pa.concat_tables([t for t, _ in tables]).equals(
            pa.concat_tables([t for t, _ in alone.piece_tables([whole])])
        )
        assert stats.lines_read == alone.stats.lines_read > 400

        # And a worker killed in the middle of a run: nothing lost or written twice.
        victim = ray.get(actors[0].pid.remote())
        again = ingest.Ingestor(task, _settings(), batch_rows=64)
        out = []
        for k, tables in enumerate(ray_ingest.ingest_tables(again, files, actors, piece_bytes=3000)):
            out.append(tables)
            if k == 3:
                os.kill(victim, signal.SIGKILL)
        assert ray.get(actors[0].pid.remote()) != victim
        got = _ingested(again, out)
        assert got[0].equals(want[0]) and got[1].equals(want[1]) and got[2] == want[2]
    finally:
        ray_ingest.stop_workers(actors)


def test_the_reasoning_traces_asset_takes_the_ingest_engine_from_the_config(ray_cluster, tmp_path):
    """The asset's choice of engine (assets/deploy.py): compute.engine ray ingests the pieces in Ray workers (the
    cluster is on this machine, so they open the files) and gives what local gives."""
    from assets.deploy import _ingest_engine

    files = _messy_logs(tmp_path)
    out, engines = {}, {}
    for engine in ("local", "ray"):
        cfg = build_config({"compute": {"engine": engine, "ray_workers": 2}})
        ingestor = ingest.Ingestor(load_task(cfg), _settings())
        with _ingest_engine(cfg, _settings()) as (ingested, engines[engine]):
            out[engine] = _ingested(ingestor, ingested(ingestor, files))
    assert engines == {"local": "local", "ray": "ray (2 workers)"}
    assert out["ray"][0].equals(out["local"][0]) and out["ray"][1].equals(out["local"][1])
    assert out["ray"][2] == out["local"][2] and out["ray"][2]["traces"] > 500
