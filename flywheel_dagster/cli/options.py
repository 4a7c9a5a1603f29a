"""The options the commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HomeOpt = Annotated[Path | None, typer.Option("--home", help="state folder (default $FLYWHEEL_HOME or .flywheel)")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="flywheel.yaml (default ./flywheel.yaml if present)")
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="playground | smollm2 | smollm2-arithmetic | production")
]
CycleOpt = Annotated[str, typer.Option("--cycle", help="the quarter's partition key, e.g. 2026-07-01")]
NoteOpt = Annotated[str, typer.Option("--note", help="why (kept in the audit record and MLflow)")]
ByOpt = Annotated[str, typer.Option("--by", help="the person deciding, by name")]
