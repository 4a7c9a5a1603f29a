"""Harvest throughput and memory at quarter scale: traces/s per step and peak RSS.

    .venv/bin/python benchmarks/harvest.py [--traces 1000000] [--batch 8192] [--task playground|gsm8k]

Writes N synthetic gateway log records (playground questions, 40% wrong answers, 2% with PII pasted
into the question, both reasoning styles) as JSON Lines, then streams them through the harvest twice,
each pass in a fresh process on one core (Arrow thread pools set to 1):
  exact: ingest + verify + decontaminate + PII + filters + exact dedup (+ labels, Parquet write)
  near:  the same plus MinHash LSH near-dedup
and prints traces/s per step, overall, and the process's peak RSS (one-time start-up work, imports and regex
compilation, runs on 500 lines before the clock starts and is printed apart).

Targets on one core (issue #18): exact pass >= 100,000 traces/s, near pass >= 50,000 traces/s, GSM8K-sized
traces >= 20,000 traces/s (exact), peak RSS < 1 GB. Measured on the 2-core dev machine, --traces 300000
(2026-12-04, two runs): exact 36,084-36,523 traces/s (26,741 before #18), near 22,663-23,746 (12,165), RSS 383 /
450 MB; --task gsm8k --traces 100000: exact 19,958-20,111 (4,423), near 8,100-8,701. 2026-12-05, by turns with
c2432c5 on 200,000 / 100,000 traces: near 26,489-27,809 (24,729-24,896 at c2432c5), GSM8K near 12,547-12,781
(8,534-8,771), exact within noise (playground 35,994-36,310, GSM8K 19,955-20,305). The GSM8K-sized target is at
the edge of the machine's run-to-run noise, the others are not met; docs/harvest.md says where the time goes.
Peak RSS is bounded: the quarter's dedup and cap state spills to disk past harvest.dedup.state_memory_mb (near
pass on 10 million playground traces: 868 MB peak, 602 MB at 1 million; docs/harvest.md).
`--engine ray --workers 1,2` times the log ingest (pieces of the file in Ray workers) and the harvest after the
ingest with 1 and 2 Ray workers and prints the scale-out efficiency and the driver's CPU a trace (the ceiling of
one driver), four runs on 2026-12-04: ingest 74,075-88,461 -> 121,398-137,345 traces/s (0.75-0.82), driver
1.7-1.9 us a trace (of twelve uneven gzip files, when they were not cut: 67,321-68,865 -> 80,688-84,887, 0.59-0.63,
270,000 traces; inflated into pieces by the driver since 2026-12-05: 81,558 -> 121,316, 0.74, 300,000 traces); harvest exact 64,350-77,213 -> 98,255-104,970 (0.68-0.78), near 30,901-36,444 ->
44,208-55,966 (0.72-0.81), driver 3.1-3.5 / 3.8-4.7 us a trace since the decisions went to numpy (1a7acaf).
`--task gsm8k` runs GSM8K word problems instead (reasoning ten times longer, math-verify as the verifier).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)


def make_task(name: str):  # noqa: ANN201
    from flywheel_dagster.tasks.gsm8k import GSM8KTask
    from flywheel_dagster.tasks.playground import PlaygroundTask

    return PlaygroundTask() if name == "playground" else GSM8KTask()


def generate(path: Path, n: int, task_name: str) -> float:
    from flywheel_dagster.curation import loggen

    task = make_task(task_name)
    t = time.perf_counter()
    problems = task.traffic(0, max(1000, n // 20))
    loggen.write_jsonl(path, loggen.synthetic_records(task, problems, n, START, END, seed=1))
    return time.perf_counter() - t


def one_pass(path: Path, near: bool, batch: int, task_name: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    from flywheel_dagster.config import build_config
    from flywheel_dagster.curation import ingest
    from flywheel_dagster.curation.harvest import Harvester
    from flywheel_dagster.traces.lake import parquet_options
    from flywheel_dagster.traces.schema import HARVESTED_SCHEMA

    cfg = build_config({"harvest": {"dedup": {"near_duplicates": near}}})
    task = make_task(task_name)
    harvester = Harvester(task, cfg.harvest, [p.prompt for p in task.benchmark(150, cfg.benchmark.seed)])
    ingestor = ingest.Ingestor(task, ingest.Settings("2026-01-01", ingest.Window(START, END)), batch_rows=batch)
    seconds = {"ingest": 0.0, "write": 0.0}
    out = path.with_suffix(f".{'near' if near else 'exact'}.parquet")
    # Once a process, not per trace: the first 500 lines through a throwaway ingest and harvest, so the steady
    # state is timed (pyarrow imports pandas on its first conversion, the PII and verifier regexes compile on
    # first use, about 2 s in all here); reported on its own as `warmup`.
    t = time.perf_counter()
    warm = path.with_suffix(".warmup.jsonl")
    with open(path, "rb") as f:
        warm.write_bytes(b"".join(f.readline() for _ in range(500)))
    scratch = Harvester(task, cfg.harvest, [p.prompt for p in task.benchmark(150, cfg.benchmark.seed)])
    for table, _ in ingest.Ingestor(task, ingestor.settings).tables([str(warm)]):
        scratch.process(table)
    warm.unlink()
    warmup = time.perf_counter() - t
    started = time.perf_counter()
    with pq.ParquetWriter(out, HARVESTED_SCHEMA, **parquet_options(HARVESTED_SCHEMA)) as writer:
        batches = ingestor.tables([str(path)])
        while True:
            t = time.perf_counter()
            try:
                table, _quarantine = next(batches)
            except StopIteration:
                break
            seconds["ingest"] += time.perf_counter() - t
            harvested = harvester.process(table)
            t = time.perf_counter()
            writer.write_table(harvested)
            seconds["write"] += time.perf_counter() - t
    total = time.perf_counter() - started
    seconds.update(harvester.stats.seconds)
    return {
        "traces": ingestor.stats.traces,
        "total_s": total,
        "warmup_s": warmup,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "counts": harvester.stats.as_counts(),
        "pii": dict(harvester.stats.pii),
    }


def ray_config(task_name: str, overrides: dict | None = None):  # noqa: ANN201
    """The config the Ray passes give their workers: the task's, with a model the harvest never loads for GSM8K."""
    from flywheel_dagster.config import build_config

    model = {} if task_name == "playground" else {"model": {"kind": "hf", "hf_path": "unused-by-the-harvest"}}
    return build_config({"task": {"source": task_name}, **model, **(overrides or {})})


def ray_pass(path: Path, near: bool, batch: int, task_name: str, workers: int) -> dict:
    """The harvest of the already-ingested traces, as the harvested_traces asset runs it: a lake partition whose
    row groups the `workers` Ray actors read themselves for the per-trace work, this process deciding in order
    and writing the harvested partition; traces/s of the harvest alone."""
    import pyarrow as pa
    import ray

    from flywheel_dagster.curation import ingest, ray_harvest
    from flywheel_dagster.curation.harvest import Harvester
    from flywheel_dagster.traces.lake import Lake
    from flywheel_dagster.traces.schema import HARVESTED_SCHEMA, TRACE_SCHEMA

    pa.set_cpu_count(1)
    task = make_task(task_name)
    lake, key = Lake(str(path.with_suffix(".lake"))), "2026-01-01"
    if not lake.exists("reasoning_traces", key):  # ingest once, untimed: the Ray pass starts from that table
        ingestor = ingest.Ingestor(task, ingest.Settings(key, ingest.Window(START, END)), batch_rows=batch)
        with lake.open_partition("reasoning_traces", key) as part:
            w = part.parquet("part-00000.parquet", TRACE_SCHEMA)
            for table, _ in ingestor.tables([str(path)]):
                w.write_table(table)
    groups = lake.row_groups("reasoning_traces", key)
    cfg = ray_config(task_name, {"harvest": {"dedup": {"near_duplicates": near}}})
    prompts = [p.prompt for p in task.benchmark(150, cfg.benchmark.seed)]
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    actors = ray_harvest.start_workers(cfg, prompts, workers)
    ray.get([a.pid.remote() for a in actors])  # started and built before the clock
    # One-time work before the clock, as in the local pass: a small batch to every actor and back (the first
    # Arrow table sent through Ray imports and compiles its serialization code, about 0.8 s in the driver).
    warm = groups[0].read().slice(0, 500)
    for _ in ray_harvest.harvest_batches(Harvester(task, cfg.harvest, prompts), [warm] * len(actors), actors):
        pass
    harvester = Harvester(task, cfg.harvest, prompts)
    started, cpu = time.perf_counter(), time.process_time()
    with lake.open_partition("harvested_traces", f"{key}-ray{workers}") as part:
        writer = part.parquet("part-00000.parquet", HARVESTED_SCHEMA)
        for table in ray_harvest.harvest_batches(harvester, groups, actors):
            writer.write_table(table)
    total, driver_cpu = time.perf_counter() - started, time.process_time() - cpu
    ray_harvest.stop_workers(actors)
    n = harvester.stats.counts["read"]
    return {"traces": n, "total_s": total, "driver_cpu_s": driver_cpu, "counts": harvester.stats.as_counts()}


def ray_ingest_pass(path: Path, batch: int, task_name: str, workers: int) -> dict:
    """The log ingest as the reasoning_traces asset runs it on Ray: this process cuts the file into pieces, the
    `workers` actors ingest them, this process writes the traces in order; traces/s of the whole. `path` a folder:
    its gzip files (inflated into pieces by this process)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from flywheel_dagster.curation import ingest, ray_ingest
    from flywheel_dagster.traces.lake import parquet_options
    from flywheel_dagster.traces.schema import TRACE_SCHEMA

    pa.set_cpu_count(1)
    cfg = ray_config(task_name)
    settings = ingest.Settings("2026-01-01", ingest.Window(START, END))
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    actors = ray_ingest.start_workers(cfg, settings, workers, batch_rows=batch)
    files = sorted(str(p) for p in path.glob("*.jsonl.gz")) if path.is_dir() else [str(path)]
    # One-time work before the clock: 500 lines through every actor, as a plain piece and through a spill file
    # (the driver's first read of one imports pandas, about 0.5 s).
    with (gzip.open if path.is_dir() else open)(files[0], "rb") as f:
        head = b"".join(f.readline() for _ in range(500))
    warm = Path(files[0]).parent / "warmup.jsonl"
    warm.write_bytes(head)
    warm.with_suffix(".jsonl.gz").write_bytes(gzip.compress(head))
    ray.get([a.ingest.remote(ingest.Piece(str(warm), opened=str(warm.resolve()))) for a in actors])
    scratch = ingest.Ingestor(make_task(task_name), settings, batch_rows=batch)
    list(ray_ingest.ingest_tables(scratch, [str(warm.with_suffix(".jsonl.gz"))], actors, piece_bytes=8))
    warm.unlink()
    warm.with_suffix(".jsonl.gz").unlink()
    ingestor = ingest.Ingestor(make_task(task_name), settings, batch_rows=batch)
    out = Path(files[0]).with_suffix(f".ray{workers}.traces.parquet")
    started, cpu = time.perf_counter(), time.process_time()
    with pq.ParquetWriter(out, TRACE_SCHEMA, **parquet_options(TRACE_SCHEMA)) as writer:
        for traces, _quarantine in ray_ingest.ingest_tables(ingestor, files, actors):
            writer.write_table(traces)
    total, driver_cpu = time.perf_counter() - started, time.process_time() - cpu
    ray_ingest.stop_workers(actors)
    out.unlink()
    return {"traces": ingestor.stats.traces, "total_s": total, "driver_cpu_s": driver_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--task", choices=["playground", "gsm8k"], default="playground")
    parser.add_argument(
        "--pass", dest="one", choices=["exact", "near", "ingest", "ingest-gzip"], help=argparse.SUPPRESS
    )
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--workers", default="1,2", help="--engine ray: worker counts to compare")
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--ray-workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one in ("ingest", "ingest-gzip"):
        print(json.dumps(ray_ingest_pass(Path(args.log), args.batch, args.task, args.ray_workers)))
        return
    if args.one and args.ray_workers:
        print(json.dumps(ray_pass(Path(args.log), args.one == "near", args.batch, args.task, args.ray_workers)))
        return
    if args.one:
        print(json.dumps(one_pass(Path(args.log), args.one == "near", args.batch, args.task)))
        return
    if args.engine == "ray":
        ray_bench(args)
        return

    work = Path(tempfile.mkdtemp(prefix="flywheel-harvest-bench-"))
    log = work / "gateway.jsonl"
    gen_s = generate(log, args.traces, args.task)
    print(f"generated {args.traces:,} log records ({log.stat().st_size / 1e6:.0f} MB) in {gen_s:.1f} s")
    for mode in ("exact", "near"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--pass",
                mode,
                "--log",
                str(log),
                "--batch",
                str(args.batch),
                "--task",
                args.task,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        n = r["traces"]
        print(
            f"\n{mode} pass: {n:,} traces in {r['total_s']:.1f} s = {n / r['total_s']:,.0f} traces/s; "
            f"peak RSS {r['peak_rss_mb']:,.0f} MB (first: {r['warmup_s']:.1f} s of one-time warm-up, not counted)"
        )
        for step, s in r["seconds"].items():
            print(f"  {step:<14} {s:7.1f} s  {n / s if s else float('inf'):>12,.0f} traces/s")
        c = r["counts"]
        print("  labels: " + ", ".join(f"{k}={v:,}" for k, v in c.items() if v))
        print("  pii: " + ", ".join(f"{k}={v:,}" for k, v in sorted(r["pii"].items())))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()


def split_gzip(log: Path, folder: Path) -> Path:
    """The log as twelve gzip files of uneven size (6:1:1:1, three times), as hourly logs of a day and its nights
    come: the big ones test the Ray ingest's scheduling (a gzip file was one piece; it is inflated into pieces
    now)."""
    import gzip

    folder.mkdir()
    lines = log.read_bytes().splitlines(keepends=True)
    shares = [6, 1, 1, 1] * 3
    at = 0
    for k, share in enumerate(shares):
        n = len(lines) * share // sum(shares) if k < len(shares) - 1 else len(lines) - at
        with gzip.open(folder / f"gateway-{k:02d}.jsonl.gz", "wb", compresslevel=1) as f:
            f.write(b"".join(lines[at : at + n]))
        at += n
    return folder


def ray_bench(args: argparse.Namespace) -> None:
    """Traces/s of the log ingest and of the harvest (after the ingest) with 1, 2, ... Ray workers, and the scale-out
    efficiency of each."""
    work = Path(tempfile.mkdtemp(prefix="flywheel-harvest-bench-"))
    log = work / "gateway.jsonl"
    generate(log, args.traces, args.task)
    gz = split_gzip(log, work / "gzip")
    counts = [int(w) for w in args.workers.split(",")]
    for mode in ("ingest", "ingest-gzip", "exact", "near"):
        rates = {}
        for workers in counts:
            source = gz if mode == "ingest-gzip" else log
            cmd = [sys.executable, __file__, "--pass", mode, "--log", str(source), "--batch", str(args.batch)]
            cmd += ["--task", args.task, "--ray-workers", str(workers)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            rates[workers] = r["traces"] / r["total_s"]
            base = rates[counts[0]]
            efficiency = rates[workers] / (base * workers / counts[0])
            driver_us = r["driver_cpu_s"] / r["traces"] * 1e6
            step = {"ingest": "ingest", "ingest-gzip": "ingest of uneven gzip files"}.get(mode, f"{mode} harvest")
            print(
                f"{step}, ray, {workers} worker(s): {r['traces']:,} traces in {r['total_s']:.1f} s = "
                f"{rates[workers]:,.0f} traces/s; scale-out efficiency from {counts[0]}: {efficiency:.2f}; "
                f"driver CPU {driver_us:.1f} us a trace (its ceiling with any number of workers: "
                f"{1e6 / driver_us:,.0f} traces/s)",
                flush=True,
            )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
