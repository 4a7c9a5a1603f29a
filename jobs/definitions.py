"""The code location: every asset, check, job, schedule and the resources of the chosen profile.

FLYWHEEL_PROFILE picks the resources (local: everything under $FLYWHEEL_HOME, default .flywheel/;
production: tracking server, object storage, GPUs); the definitions themselves never fork.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import audit, deploy, distill, harvest, redeploy
from flywheel_dagster.resources import resources_for
from jobs.cycle import flywheel_cycle_job, quarterly_schedule, release_cycle_job

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([deploy, harvest, distill, redeploy, audit]),
    asset_checks=dg.load_asset_checks_from_modules([harvest, redeploy]),
    jobs=[flywheel_cycle_job, release_cycle_job],
    schedules=[quarterly_schedule],
    resources=resources_for(os.environ.get("FLYWHEEL_PROFILE", "local")),
)
