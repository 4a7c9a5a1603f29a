"""The Dagster code location that workspace.yaml names, loaded the way `dagster dev` loads it: its module imported
from its working directory. The CLI (`flywheel cycle`, `flywheel demo`) and the k8s renderer run the user's
definitions through this, so the installed library never imports the orchestration layer (assets/, jobs/)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import dagster as dg

WORKSPACE = "workspace.yaml"


class CodeLocationError(RuntimeError):
    pass


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
