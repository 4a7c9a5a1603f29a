"""The `flywheel` command: bootstrap, run cycles through Dagster, show where the flywheel stands.

    flywheel demo                 # bootstrap + three quarterly cycles on the playground preset
    flywheel bootstrap            # cycle 0: build and register the base model
    flywheel cycle 2026-07-01     # run one quarter's cycle through the Dagster job
    flywheel status               # cycles run so far, decisions, the champion

State lives under $FLYWHEEL_HOME (default .flywheel/): the Dagster instance, MLflow and the lake, the
same stores `make ui` shows. Commands run from the repository root (where workspace.yaml is), since the
Dagster code location (assets/, jobs/) is loaded from there.

session.py sets up where a command runs, runs.py runs the bootstrap and the code location's jobs in process,
render.py prints, commands.py holds the typer app.
"""

from flywheel_dagster.cli.commands import app
from flywheel_dagster.cli.runs import run_cycle
from flywheel_dagster.cli.session import Session
from flywheel_dagster.code_location import INSTANCE_YAML, ensure_instance_dir, quiet_libraries

__all__ = ["INSTANCE_YAML", "Session", "app", "ensure_instance_dir", "quiet_libraries", "run_cycle"]
