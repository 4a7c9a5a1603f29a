"""Memory of the steps that read a whole lake partition, against its size: they must stay flat.

    .venv/bin/python benchmarks/lake_memory.py [--rows 500000,2000000]

Writes a harvested_traces-like partition of each size (trace id, user id, prompt and ~1 KB of completion a row,
row groups of 8,192 as the lake writes them), then, each in a fresh process, prints the peak RSS and the peak
of pyarrow's memory pool of:
  read:  Lake.iter_batches over the partition (what the harvest, the training set and erasure stream through)
  erase: erasure's plan and rewrite of the partition for one user (erasure._plan_cycle + _rewrite)

Measured on the 2-core dev machine (2026-12-05), 500,000 and 2,000,000 rows, pyarrow pool peak (peak RSS):
  read:  33 / 33 MB (220 / 220 MB); before (3ac9859: the whole file through one pre-buffering reader):
         247 / 893 MB (375 / 1,051 MB), growing with the partition
  erase: 35 / 35 MB (220 / 230 MB); before (the partition read whole, then filtered): 1,134 / 4,538 MB
         (1,403 / 5,232 MB)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CYCLE = "2026-01-01"


def write_partition(root: str, rows: int) -> None:
    import numpy as np
    import pyarrow as pa

    from flywheel_dagster.traces.lake import Lake

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    lake = Lake(root)
    schema = pa.schema([("trace_id", pa.string()), ("user_id", pa.string()), ("prompt", pa.string()),
                        ("completion", pa.string())])  # fmt: skip
    with lake.open_partition("harvested_traces", CYCLE) as part:
        out = part.parquet("part-00000.parquet", schema)
        for start in range(0, rows, 8192):
            n = min(8192, rows - start)
            text = [" ".join(words[rng.integers(0, len(words), 200)]) for _ in range(n)]
            out.write_table(
                pa.table(
                    {
                        "trace_id": [f"t{start + i}" for i in range(n)],
                        "user_id": [f"u-{(start + i) % 5000}" for i in range(n)],
                        "prompt": [f"Q{(start + i) % 20000}" for i in range(n)],
                        "completion": text,
                    },
                    schema=schema,
                )
            )


def measure(root: str, step: str) -> dict:
    import pyarrow as pa

    from flywheel_dagster import erasure
    from flywheel_dagster.traces.lake import Lake

    lake = Lake(root)
    t = time.perf_counter()
    if step == "read":
        rows = sum(b.num_rows for b in lake.iter_batches("harvested_traces", CYCLE))
    else:
        plan = erasure._plan_cycle(lake, CYCLE, "u-17")
        erasure._rewrite(lake, "harvested_traces", CYCLE, {n: k for (t_, n), k in plan.items()})
        rows = erasure._rows(lake, "harvested_traces", CYCLE, "part-00000.parquet")
    return {
        "rows": rows,
        "seconds": time.perf_counter() - t,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pool_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="500000,2000000")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    for rows in map(int, args.rows.split(",")):
        with tempfile.TemporaryDirectory() as root:
            write_partition(root, rows)
            for step in ("read", "erase"):
                cmd = [sys.executable, __file__, "--measure", root, step]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                print(
                    f"{rows:>10,} rows  {step:<5}  {r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
                    f"pyarrow pool peak {r['pool_peak_mb']:6.0f} MB  ({r['rows']:,} rows after)"
                )


if __name__ == "__main__":
    main()
