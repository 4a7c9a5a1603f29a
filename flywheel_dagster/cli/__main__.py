"""`python -m flywheel_dagster.cli`: the `flywheel` command."""

from flywheel_dagster.cli import app

app()
