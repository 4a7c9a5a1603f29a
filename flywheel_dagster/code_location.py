"""The Dagster code location that workspace.yaml names, loaded the way `dagster dev` loads it: its module imported
from its working directory. The CLI (`flywheel cycle`, `flywheel demo`), the lab and the k8s renderer run the
user's definitions through this, so the installed library never imports the orchestration layer (assets/,
jobs/); `run_job` runs one of their jobs in process."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import dagster as dg

    from flywheel_dagster.config import FlywheelConfig

WORKSPACE = "workspace.yaml"


class CodeLocationError(RuntimeError):
    pass


# The embedded instance (SQLite): no telemetry; runs launched from the UI wait in a queue and run one at a
# time, since cycles share the registry's champion alias: a backfill of several quarters then runs them in
# quarter order (each cycle's deployment waits for the one before it).
INSTANCE_YAML = "telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 1\n"


def ensure_instance_dir(dagster_home: Path) -> None:
    """The embedded Dagster instance's folder, with a dagster.yaml (INSTANCE_YAML) unless it has one."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    cfg = dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(INSTANCE_YAML)


def quiet_libraries() -> None:
    """Keep the terminal for the flywheel's own progress: no library progress bars, INFO logs or warnings."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "dagster", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def find_workspace(start: Path) -> Path:
    """The nearest workspace.yaml at or above `start`."""
    for folder in (start, *start.parents):
        if (folder / WORKSPACE).exists():
            return folder / WORKSPACE
    raise CodeLocationError(f"no {WORKSPACE} in {start} or above it: run flywheel from the repository root")


def load_definitions(workspace: Path) -> dg.Definitions:
    """The `Definitions` object of the workspace's first python_module code location."""
    import dagster as dg

    try:
        entry = yaml.safe_load(workspace.read_text())["load_from"][0]["python_module"]
        module_name = entry["module_name"] if isinstance(entry, dict) else entry
        folder = workspace.parent / (entry.get("working_directory", ".") if isinstance(entry, dict) else ".")
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as err:
        raise CodeLocationError(
            f"{workspace}: expected load_from: [{{python_module: {{module_name: ..., working_directory: ...}}}}] "
            f"({type(err).__name__}: {err})"
        ) from None
    folder = str(folder.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(module_name)
    found = [v for v in vars(module).values() if isinstance(v, dg.Definitions)]
    if len(found) != 1:
        raise CodeLocationError(f"{module_name} ({workspace}): expected one Definitions object, found {len(found)}")
    return found[0]


def definitions_for(cfg: FlywheelConfig, workspace: Path) -> dg.Definitions:
    """The code location built for `cfg` rather than for the flywheel.yaml it reads at import: its module's
    `build_defs(cfg)` (the lab runs each arm's own config in one process)."""
    load_definitions(workspace)
    entry = yaml.safe_load(workspace.read_text())["load_from"][0]["python_module"]
    module = sys.modules[entry["module_name"] if isinstance(entry, dict) else entry]
    build = getattr(module, "build_defs", None)
    if build is None:
        raise CodeLocationError(f"{module.__name__} ({workspace}): expected a build_defs(cfg) function")
    return build(cfg)


def failure_reason(result: dg.ExecuteInProcessResult) -> str:
    """The first failed step and the error its code raised."""
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            return f"{event.step_key}: {(err.cause or err).message.strip()}"
    return "see the run in the Dagster UI"


def run_job(
    defs: dg.Definitions, name: str, partition_key: str, assets: list[str] | None = None
) -> tuple[dg.ExecuteInProcessResult, dict[str, float]]:
    """Execute one of the code location's jobs for a partition (only `assets` of it, with their checks, when
    given), in process on the persistent instance (errors quiet, none raised): its result and seconds per step,
    asset steps by name and the asset checks (monitors, PII, overlap, gate, approval) summed as one "checks"
    entry."""
    import dagster as dg

    job = defs.resolve_job_def(name)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            partition_key=partition_key,
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            asset_selection=None if assets is None else [dg.AssetKey(a) for a in assets],
        )
        assets = {k.path[-1] for k in job.asset_layer.executable_asset_keys}
        steps: dict[str, float] = {}
        for st in instance.get_run_step_stats(result.run_id):
            step = st.step_key if st.step_key in assets else "checks"
            steps[step] = steps.get(step, 0.0) + (st.end_time or 0) - (st.start_time or 0)
    return result, steps
