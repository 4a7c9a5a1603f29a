"""Where a command runs: its config and state folder, the environment the code location reads, the instance."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from flywheel_dagster.cli.render import console
from flywheel_dagster.code_location import ensure_instance_dir, quiet_libraries
from flywheel_dagster.config import (
    CONFIG_ENV,
    HOME_ENV,
    PRESET_ENV,
    ConfigError,
    FlywheelConfig,
    flywheel_home,
    load_config,
)

if TYPE_CHECKING:
    import dagster as dg

    from flywheel_dagster.registry import Registry
    from flywheel_dagster.traces.lake import Lake


@dataclass
class Session:
    cfg: FlywheelConfig
    home: Path

    def registry(self) -> Registry:
        from flywheel_dagster.resources import local_resources

        return local_resources(self.home)["mlflow"].registry(self.cfg.name)

    def lake(self) -> Lake:
        from flywheel_dagster.traces.lake import Lake

        return Lake(str(self.home / "lake"))


def open_session(home: Path | None, config: Path | None, preset: str | None) -> Session:
    """Resolve config and home, and point the environment at them so the code location sees the same."""
    try:
        cfg = load_config(config, preset=preset)
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    root = checked_home(home)
    ensure_instance_dir(root / "dagster")
    quiet_libraries()
    os.environ[HOME_ENV] = str(root)
    os.environ["DAGSTER_HOME"] = str(root / "dagster")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if config is not None:
        os.environ[CONFIG_ENV] = str(Path(config).resolve())
    if preset is not None:
        os.environ[PRESET_ENV] = preset
    return Session(cfg, root)


def checked_home(home: Path | None) -> Path:
    """The state folder; exit 2 naming the culprit if it, or a folder above it, is a file."""
    root = flywheel_home(home)
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                what = "--home" if p == root else f"--home {root}: {p}"
                console.print(f"[red]{what} is a file, not a folder: the flywheel's state needs a folder[/red]")
                raise typer.Exit(2)
            break
    return root


def valid_cycle(s: Session, quarter: str) -> None:
    """Refuse a key that is not a partition before anything runs (no bootstrap, no traceback)."""
    from flywheel_dagster.partitions import not_a_cycle

    problem = not_a_cycle(quarter, s.cfg.schedule.start_date)
    if problem is None:
        return
    console.print(f"[red]{problem}[/red]")
    raise typer.Exit(2)


def code_location() -> dg.Definitions:
    """The Dagster definitions of the code location workspace.yaml names (assets/, jobs/ in this repository)."""
    from flywheel_dagster.code_location import CodeLocationError, find_workspace, load_definitions

    try:
        return load_definitions(find_workspace(Path.cwd()))
    except CodeLocationError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
