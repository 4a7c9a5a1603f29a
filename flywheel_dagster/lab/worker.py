"""One arm of a lab, in its own process: `python -m flywheel_dagster.lab.worker FOLDER ARM CYCLES`.

Runs the arm's cycles that `cycles.jsonl` does not hold yet, in quarter order, each through the code
location's `flywheel_cycle` job on the arm's own home, and appends each finished cycle's figures as one line.
Exits 1 with the failed step's error on the last line of its output if a cycle fails.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from flywheel_dagster.lab.runner import CYCLES_FILE, LAB_FILE, Lab


def load_lab(folder: Path, cycles: int) -> Lab:
    from flywheel_dagster.lab.arms import Arm

    spec = json.loads((folder / LAB_FILE).read_text())
    arms = [
        Arm(name, a["description"], a["overlay"], {int(k): v for k, v in a["from_cycle"].items()})
        for name, a in spec["arms"].items()
    ]
    return Lab(folder, spec["base"], arms, cycles)


def cycle_figures(lake: Any, quarter: str) -> dict[str, Any]:  # noqa: ANN401 - a Lake
    """What the lab keeps of a finished cycle: accuracies with CIs, the decision, monitors, tokens."""
    from flywheel_dagster.curation.monitors import MONITORS
    from flywheel_dagster.records import REASONING_TRACES, BenchmarkReport, Candidate, Decision, HarvestedSet

    report = BenchmarkReport.read(lake, quarter)
    decision = Decision.read(lake, quarter)
    candidate = Candidate.read(lake, quarter)
    monitors = HarvestedSet.monitors(lake, quarter) or {}
    traces = lake.read_table(REASONING_TRACES, quarter)
    return {
        "suites": {
            s["suite"]: {k: s[k] for k in ("champion", "champion_ci", "candidate", "candidate_ci", "delta", "delta_ci")}
            for s in report.suites
        },
        "decision": decision.decision,
        "monitors": {name: monitors.get(name) for name in MONITORS},
        "tokens_generated_at_deploy": int(sum(traces.column("tokens").to_pylist())),
        "tokens_trained": candidate.tokens_trained,
        "tokens_generated_in_training": candidate.tokens_generated,
    }


def main(folder: Path, arm_name: str, cycles: int) -> int:
    lab = load_lab(folder, cycles)
    arm = lab.arm(arm_name)
    home = lab.arm_dir(arm_name)
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    from flywheel_dagster.code_location import ensure_instance_dir, quiet_libraries

    ensure_instance_dir(home / "dagster")
    quiet_libraries()
    from flywheel_dagster.bootstrap import bootstrap
    from flywheel_dagster.code_location import definitions_for, failure_reason, find_workspace, run_job
    from flywheel_dagster.config import CONFIG_ENV, build_config
    from flywheel_dagster.records import BENCHMARK_REPORT, CHAMPION_MODEL, BenchmarkReport
    from flywheel_dagster.resources import local_resources
    from flywheel_dagster.traces.lake import Lake

    workspace = find_workspace(Path.cwd())  # the lab runs from the repository root, like every command
    done = len(lab.finished(arm_name))
    defs_for: dict[str, Any] = {}
    for index, quarter in enumerate(lab.quarters, 1):
        if index <= done:
            continue
        raw = lab.arm_config(arm, index)
        config_file = home / f"config-cycle-{index}.json"
        config_file.write_text(json.dumps(raw, indent=2))
        os.environ[CONFIG_ENV] = str(config_file)  # what the code location reads at import, and training jobs
        cfg = build_config(raw, source=str(config_file))
        key = json.dumps(raw, sort_keys=True)
        if key not in defs_for:
            defs_for[key] = definitions_for(cfg, workspace)
        registry = local_resources(home)["mlflow"].registry(cfg.name)
        bootstrap(cfg, registry, home / "models")
        # A cycle the last run was stopped in after its candidate was benchmarked (a kill mid-promotion, or after
        # it but before the row below) finishes from its benchmark report on (the report again, from the cached
        # evaluations; champion_model, which makes the same decision again; cycle_audit), not trained again: a
        # new candidate would be benchmarked against the champion of before, which the stopped run may already
        # have replaced, and candidate_model refuses that.
        lake = Lake(str(home / "lake"))
        rest = [BENCHMARK_REPORT, CHAMPION_MODEL, "cycle_audit"] if BenchmarkReport.exists(lake, quarter) else None
        started = time.perf_counter()
        result, steps = run_job(defs_for[key], "flywheel_cycle", quarter, rest)
        seconds = time.perf_counter() - started
        if not result.success:
            print(f"cycle {index} ({quarter}) failed (run {result.run_id}): {failure_reason(result)}", flush=True)
            return 1
        row = {"cycle": index, "quarter": quarter, **cycle_figures(lake, quarter)}
        row |= {"seconds": round(seconds, 1), "steps": {k: round(v, 1) for k, v in steps.items()}}
        with (home / CYCLES_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"cycle {index} ({quarter}): {row['decision']}, {seconds:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
