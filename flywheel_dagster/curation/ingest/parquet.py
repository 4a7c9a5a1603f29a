"""Parquet files in our own trace schema: batches into rows, each row checked against the schema's Arrow types."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pyarrow as pa

from flywheel_dagster.curation.ingest.chat import RecordError, Settings, _count
from flywheel_dagster.traces.schema import CONTEXT_PII, TRACE_SCHEMA, context_pii_pairs

FLOAT32_MAX = 3.4028234663852886e38


def _context_pii_error(cell: str) -> RecordError | None:
    """The wrong_type error of a context_pii cell that is not pairs a detector could report, else None. The PII
    package is imported here, at the first such cell, not with the ingest (0.2 s; the quarantine's excerpts
    import it when they first need it too)."""
    from flywheel_dagster.curation import pii

    pairs = context_pii_pairs(cell)
    if pairs is not None and all(pii.pair_ok(kind, value) for kind, value in pairs):
        return None
    types = ", ".join(pii.PII_TYPES)
    expected = f"each a type of {types} and a value a detector could report as that type (pii.pair_ok)"
    return RecordError("wrong_type", f"'{CONTEXT_PII}' must be a JSON list of [type, value] pairs: {expected}")


def _cell_error(column: str, err: Exception) -> RecordError:
    reason = (
        "invalid_utf8"
        if isinstance(err, UnicodeError)
        else "out_of_range"
        if isinstance(err, OverflowError | ValueError)
        else "wrong_type"
    )
    return RecordError(reason, f"'{column}' cannot be read as a value ({type(err).__name__})")


def _batch_rows(batch: pa.RecordBatch) -> list[tuple[dict, RecordError | None]]:
    """A Parquet batch's rows as dicts, each with the error of its first unreadable cell, if any."""
    columns: dict[str, list] = {}
    problems: dict[int, RecordError] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
                column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
            columns[name] = column.to_pylist()
        except Exception:  # noqa: BLE001 - find the cells at fault
            values = []
            for i in range(len(column)):
                try:
                    values.append(column[i].as_py())
                except Exception as err:  # noqa: BLE001
                    values.append(None)
                    problems.setdefault(i, _cell_error(name, err))
            columns[name] = values
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return [(r, problems.get(i)) for i, r in enumerate(rows)]


def _trace_row(r: dict, settings: Settings) -> dict:
    """A Parquet row checked against the trace schema, value by value; raises RecordError."""
    for f in TRACE_SCHEMA:
        if f.name == "cycle":
            continue
        value = r.get(f.name)
        if value is None:
            if not f.nullable:
                raise RecordError("missing_field", f"'{f.name}' is null")
            r[f.name] = None
            continue
        t = f.type
        if pa.types.is_string(t):
            if not isinstance(value, str):
                raise RecordError("wrong_type", f"'{f.name}' must be a string, got {type(value).__name__}")
            if f.name == CONTEXT_PII and (err := _context_pii_error(value)) is not None:
                raise err
        elif pa.types.is_integer(t):
            r[f.name] = _count(value, f.name)
        elif pa.types.is_boolean(t):
            if not isinstance(value, bool):
                raise RecordError("wrong_type", f"'{f.name}' must be a boolean, got {type(value).__name__}")
        elif pa.types.is_floating(t):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RecordError("wrong_type", f"'{f.name}' must be a number, got {type(value).__name__}")
            if math.isfinite(value) and abs(value) > FLOAT32_MAX:
                raise RecordError("out_of_range", f"'{f.name}' is beyond a float32")
            r[f.name] = float(value)
        elif pa.types.is_timestamp(t):
            if not isinstance(value, datetime):
                raise RecordError("wrong_type", f"'{f.name}' must be a timestamp, got {type(value).__name__}")
            if value.tzinfo is None:
                r[f.name] = value = value.replace(tzinfo=UTC)
    ts = r["created_at"]
    if not settings.window.contains(ts):
        raise RecordError("outside_window", f"{ts.isoformat()} is outside the window")
    if not r["completion"].strip():
        raise RecordError("empty_completion", "'completion' is empty")
    r["cycle"] = settings.cycle
    return r
