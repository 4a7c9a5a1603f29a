"""The harvest on a real local Ray cluster (compute.engine: ray) writes exactly what the local harvest writes on
the same input, near dedup included, and a worker killed mid-run is restarted without losing or duplicating a
row."""

from __future__ import annotations

import gzip
import os
import signal

import pyarrow as pa
import pytest
from make_harvest_reference import OUT, input_path
from test_harvest_reference import first_difference

from flywheel_dagster.config import build_config
from flywheel_dagster.curation import ingest, ray_harvest
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
    actors = ray_harvest.start_workers(cfg.model_dump(mode="json"), prompts, 2)
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
    actors = ray_harvest.start_workers(cfg.model_dump(mode="json"), prompts, 2)
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
