"""Reading flywheel.yaml: a preset, the file's overrides merged field by field, errors that name the field."""

from __future__ import annotations

import copy
import datetime as dt
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flywheel_dagster.config.base import ConfigError
from flywheel_dagster.config.models import FlywheelConfig
from flywheel_dagster.config.presets import PRESETS

CONFIG_ENV = "FLYWHEEL_CONFIG"
HOME_ENV = "FLYWHEEL_HOME"
PRESET_ENV = "FLYWHEEL_PRESET"


def merged(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with each override merged in, field by field (a nested section keeps what it does not set)."""
    out = copy.deepcopy(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid flywheel config ({source}):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against flywheel.yaml's documented fields"
        if isinstance(got, dt.date):
            msg += f"; YAML read an unquoted date: quote it, e.g. '{got.isoformat()}'"
        lines.append(f"  - {msg}{got_text}" if where == "<root>" else f"  - {where}: {msg}{got_text}")
    return "\n".join(lines)


def build_config(
    overrides: dict[str, Any] | None = None, preset: str | None = None, source: str = "<overrides>"
) -> FlywheelConfig:
    """Build a config from a preset plus overrides; raises ConfigError naming each bad field."""
    overrides = dict(overrides or {})
    name = preset or overrides.get("preset") or "playground"
    if name not in PRESETS:
        raise ConfigError(
            f"invalid flywheel config ({source}):\n  - preset: expected one of {sorted(PRESETS)} (got {name!r})"
        )
    overrides["preset"] = name
    try:
        return FlywheelConfig.model_validate(merged(PRESETS[name], overrides))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | os.PathLike[str] | None = None, preset: str | None = None) -> FlywheelConfig:
    """Load a flywheel config: `path`, else $FLYWHEEL_CONFIG, else ./flywheel.yaml, on top of its preset.

    A preset asked for by name (argument or $FLYWHEEL_PRESET) without a file means that preset as it is:
    the implicit ./flywheel.yaml (say, the playground example) is not layered onto another preset.
    """
    path = path or os.environ.get(CONFIG_ENV)
    preset = preset or os.environ.get(PRESET_ENV) or None
    if path is None and preset is None and Path("flywheel.yaml").exists():
        path = "flywheel.yaml"
    if path is None:
        return build_config({}, preset=preset, source=f"preset {preset or 'playground'}")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"flywheel config file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"flywheel config file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"flywheel config file {str(p)!r}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    if preset is not None:
        raw["preset"] = preset
    return build_config(raw, source=str(p))


def flywheel_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The embedded default's state folder: $FLYWHEEL_HOME or ./.flywheel."""
    return Path(home or os.environ.get(HOME_ENV, ".flywheel")).resolve()
