"""The base of every flywheel.yaml section, and the error an invalid config raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """flywheel.yaml (or a preset override) is invalid; the message names each bad field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
