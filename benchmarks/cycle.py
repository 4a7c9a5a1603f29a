"""Wall time per stage of one flywheel cycle, and the share spent outside stage compute.

    .venv/bin/python benchmarks/cycle.py [--cycles 1] [--config flywheel.yaml]

Runs bootstrap + N cycles through the Dagster job on a fresh embedded instance in a temporary folder and
prints, per stage, the step's wall time (Dagster's step stats) and its compute time (the time spent in the
core functions: generation, verification, training, evaluation). The difference is orchestration
overhead: Dagster's run/step machinery, event storage, MLflow calls, lake I/O and model loading.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--config", default=str(ROOT / "flywheel.yaml"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    os.environ["FLYWHEEL_CONFIG"] = args.config
    from flywheel_dagster.cli import ensure_instance_dir, quiet_libraries

    ensure_instance_dir(home / "dagster")
    quiet_libraries()

    import dagster as dg

    from flywheel_dagster import timing
    from flywheel_dagster.bootstrap import bootstrap
    from flywheel_dagster.config import load_config
    from flywheel_dagster.resources import local_resources

    cfg = load_config(args.config)
    registry = local_resources(home)["mlflow"].registry(cfg.name)
    t0 = time.perf_counter()
    bootstrap(cfg, registry, home / "models")
    print(f"bootstrap: {time.perf_counter() - t0:.1f}s")

    from flywheel_dagster.partitions import quarterly_partitions
    from jobs.definitions import build_defs

    job = build_defs(cfg).resolve_job_def("flywheel_cycle")
    for quarter in quarterly_partitions(cfg.schedule.start_date).get_partition_keys()[-args.cycles :]:
        timing.reset()
        started = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            result = job.execute_in_process(
                partition_key=quarter,
                instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(result.run_id)}
        run_wall = time.perf_counter() - started
        compute = timing.totals()
        print(f"\ncycle {quarter}: run wall {run_wall:.1f}s")
        print(f"{'stage':<34}{'step wall s':>12}{'compute s':>12}{'outside s':>12}")
        for step, wall in steps.items():
            c = compute.get(step, 0.0)
            print(f"{step:<34}{wall:>12.1f}{c:>12.1f}{wall - c:>12.1f}")
        total_compute = sum(compute.values())
        outside = run_wall - total_compute
        print(f"{'total':<34}{run_wall:>12.1f}{total_compute:>12.1f}{outside:>12.1f}")
        print(f"share of the cycle outside stage compute: {outside / run_wall:.1%}")


if __name__ == "__main__":
    main()
