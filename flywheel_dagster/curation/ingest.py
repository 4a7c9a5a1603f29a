"""Ingest a quarter's production logs into trace records, quarantining every line that cannot be used.

Two formats:
- JSON Lines of OpenAI chat-completions request/response records, as a gateway or a vLLM server logs
  them (`*.jsonl`, `*.jsonl.gz`). One record per line:

      {"timestamp": "2026-02-03T10:00:00Z", "request_id": "r-1", "workload_id": "math-tutor",
       "user_id": "u-42", "request": {"model": "m", "messages": [{"role": "user", "content": "..."}]},
       "response": {"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "...", "reasoning_content": "..."}}],
                    "usage": {"completion_tokens": 42}},
       "metadata": {"reference_answer": "132", "model_version": "3"}}

  The reasoning is `reasoning_content` (vLLM's reasoning parser) or inline `<think>...</think>` in the
  content. `timestamp` may be missing when `response.created` (Unix seconds) is there. A record with n
  choices gives n traces.
- Parquet files in our own trace schema (`*.parquet`), e.g. what `flywheel serve` captures.

Every line read ends up in exactly one place: ingested (its traces go to `reasoning_traces`), or the
quarantine with a reason code (QUARANTINE_REASONS). `lines_read = lines_ingested + lines_quarantined`,
file by file. A bad line never stops the file, and nothing about one line or one file stops the quarter:
a damaged file keeps the lines before the damage and quarantines the rest as one `unreadable_file` entry
(for Parquet, per row group, counting its rows); a file of another kind found in a folder is skipped and
counted (IngestStats.files_skipped). Lines are read with a size limit, so memory stays bounded whatever
a file holds; every ingested row fits the trace schema's Arrow types.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import io
import json
import math
import os
import re
import traceback
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel_dagster.tasks.base import TaskSource
from flywheel_dagster.traces.schema import TRACE_SCHEMA

QUARANTINE_REASONS = (
    "invalid_utf8",
    "bad_json",
    "not_an_object",
    "oversized_record",
    "ambiguous_record",  # a key repeats in a JSON object: which value is meant is unknown
    "missing_field",
    "wrong_type",
    "out_of_range",  # a number or a time the trace schema cannot hold (int32 counts, years 1-9999)
    "bad_timestamp",
    "outside_window",
    "no_user_message",
    "empty_completion",
    "unexpected_error",  # the ingest itself failed on this line: a bug to fix, counted meanwhile
    "unreadable_file",
)

QUARANTINE_TABLE = "ingest_quarantine"
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),  # 1-based; row index + 1 for Parquet; 0: the whole file
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),  # what was wrong: field, type, size; never the content
        pa.field("excerpt", pa.string(), nullable=False),  # first bytes of the line, PII redacted
        pa.field("user_id", pa.string()),
    ]
)

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
_DATE_DIR = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})(?:/|$)")
EXCERPT_BYTES = 240
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
# Unix seconds of 0001-01-01 and 10000-01-01 UTC: what a datetime (and so the trace's created_at) can hold.
_EPOCH_MIN, _EPOCH_END = -62_135_596_800, 253_402_300_800
_SKIP_BYTES = 1 << 16  # the rest of an oversized line is read and dropped this much at a time
_GZIP_STEP = 1 << 16  # compressed bytes inflated at a time
# Keys the ingest reads: an ambiguous record's detail names these, any other key only by its length.
_KNOWN_KEYS = frozenset(
    "timestamp request_id workload_id user_id request response metadata messages role content type text "
    "choices index message reasoning_content reasoning finish_reason usage prompt_tokens completion_tokens "
    "total_tokens model created id object reference_answer model_version".split()
)
_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


class RecordError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Window:
    """The partition's time window, [start, end) in UTC."""

    start: datetime
    end: datetime

    def contains(self, ts: datetime) -> bool:
        return self.start <= ts < self.end


@dataclass
class IngestStats:
    lines_read: int = 0
    lines_ingested: int = 0
    traces: int = 0
    files: int = 0
    quarantined: Counter = field(default_factory=Counter)
    # Paths given to the ingest that are not log files (another suffix, not a regular file, a folder that
    # cannot be listed): not read, not lines, but listed so that nothing disappears unseen.
    files_skipped: list[str] = field(default_factory=list)

    @property
    def lines_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def as_metadata(self) -> dict[str, int | list[str]]:
        out: dict[str, int | list[str]] = {
            "lines_read": self.lines_read,
            "lines_ingested": self.lines_ingested,
            "lines_quarantined": self.lines_quarantined,
            "traces": self.traces,
            "files": self.files,
            "files_skipped": len(self.files_skipped),
            "files_skipped/names": self.files_skipped[:50],
        }
        out.update({f"quarantine/{r}": self.quarantined.get(r, 0) for r in QUARANTINE_REASONS})
        return out


class LogFiles(list):
    """find_log_files' answer: the log files to read, in order; `skipped`: what else the paths held (files of
    other kinds, things that are not regular files, folders that cannot be listed). Ingestor.batches counts
    those in IngestStats.files_skipped, so they are visible and never fail the quarter."""

    skipped: list[str]


def find_log_files(paths: list[str], window: Window | None = None) -> LogFiles:
    """Log files (*.jsonl, *.jsonl.gz, *.parquet) under the given paths (files, folders searched
    recursively, or globs), sorted; everything else found there in `.skipped`.

    A file under a `date=YYYY-MM-DD` folder whose date is outside the window is left out unread, so a
    quarter reads its own days, not the whole history. A path that matches nothing at all is a
    configuration error (FileNotFoundError).
    """
    found: set[str] = set()
    for p in paths:
        pattern = os.path.expanduser(p)
        expanded = glob.glob(pattern, recursive=True) or ([pattern] if os.path.lexists(pattern) else [])
        if not expanded:
            raise FileNotFoundError(f"log path {p!r} matches no file or folder")
        for e in expanded:
            if os.path.isdir(e):
                found.update(_folder_files(e))
            else:
                found.add(e)
    files = sorted(found)
    if window is not None:
        files = [f for f in files if _in_window(f, window)]
    out = LogFiles(f for f in files if _readable_log(f))
    out.skipped = [f for f in files if not _readable_log(f)]
    return out


def _in_window(path: str, window: Window) -> bool:
    m = _DATE_DIR.search(path.replace(os.sep, "/"))
    if not m:
        return True
    try:
        day = datetime.fromisoformat(m.group(1)).date()
    except ValueError:  # date=2026-13-40 is no date: read it rather than lose it
        return True
    return window.start.date() <= day < window.end.date()


def _readable_log(path: str) -> bool:
    """A log file by its name, and a regular file (a FIFO would block, a dangling link cannot be read)."""
    return _log_kind(path) is not None and os.path.isfile(path)


def _folder_files(folder: str) -> list[str]:
    """Every file under a folder, plus what is not searched: folders that cannot be listed, linked folders."""
    out: list[str] = []
    unlisted: list[OSError] = []
    for root, dirs, names in os.walk(folder, onerror=unlisted.append):
        out.extend(os.path.join(root, n) for n in names)
        out.extend(os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d)))
    return out + [str(err.filename) for err in unlisted if err.filename]


def _log_kind(path: str) -> str | None:
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    return None


def _shown(path: str) -> str:
    """The path as text that any writer accepts (a file name that is not UTF-8 gets U+FFFD)."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def _count(value: object, where: str) -> int:
    """A count or an index: a non-negative integer that fits the trace schema's int32 columns."""
    if type(value) is int and 0 <= value <= INT32_MAX:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("wrong_type", f"'{where}' must be a non-negative integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():  # also nan and inf
            raise RecordError("wrong_type", f"'{where}' must be an integer, got a non-integral float")
        value = int(value)
    if value < 0:
        raise RecordError("out_of_range", f"'{where}' is negative")
    if value > INT32_MAX:
        raise RecordError("out_of_range", f"'{where}' is above {INT32_MAX} (an int32), {len(str(value))} digits")
    return value


def _timestamp(record: dict) -> datetime:
    ts = record.get("timestamp")
    if ts is None:
        created = (record.get("response") or {}).get("created") if isinstance(record.get("response"), dict) else None
        if created is None:
            raise RecordError("missing_field", "no 'timestamp' and no 'response.created'")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise RecordError("wrong_type", f"'response.created' must be Unix seconds, got {type(created).__name__}")
        if not (math.isfinite(created) and _EPOCH_MIN <= created < _EPOCH_END):
            raise RecordError("out_of_range", "'response.created' is not a Unix time in years 1-9999")
        try:
            return datetime.fromtimestamp(created, UTC)
        except (OverflowError, OSError, ValueError):  # the platform's time_t, or rounding up to year 10000
            raise RecordError("out_of_range", "'response.created' is not a Unix time in years 1-9999") from None
    if not isinstance(ts, str):
        raise RecordError("wrong_type", f"'timestamp' must be an ISO 8601 string, got {type(ts).__name__}")
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        raise RecordError("bad_timestamp", f"'timestamp' ({len(ts)} chars) is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise RecordError("bad_timestamp", "'timestamp' has no time zone (expected e.g. ...Z)")
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):  # 9999-12-31T23:00-05:00 is in year 10000 in UTC
        raise RecordError("out_of_range", "'timestamp' is outside years 1-9999 in UTC") from None


def _text(content: object, where: str) -> str:
    """Message content: a string, or a list of parts of which the text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise RecordError("wrong_type", f"'{where}' parts must be objects, got {type(part).__name__}")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise RecordError("wrong_type", f"'{where}' text part has no string 'text'")
                parts.append(part["text"])
        return "".join(parts)
    if content is None:
        raise RecordError("missing_field", f"'{where}' is missing")
    raise RecordError("wrong_type", f"'{where}' must be a string or a list of parts, got {type(content).__name__}")


def _get(obj: dict, key: str, kind: type | tuple, where: str) -> object:
    if key not in obj or obj[key] is None:
        raise RecordError("missing_field", f"'{where}' is missing")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RecordError("wrong_type", f"'{where}' must be {names}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Settings:
    cycle: str
    window: Window
    max_record_bytes: int = 1_000_000
    reasoning_markup: str = "plain"  # "plain": reasoning, newline, answer; "think": <think>reasoning</think>answer


def _completion(reasoning: str | None, content: str, markup: str) -> tuple[str, str | None]:
    """The generated text as trained on, and the reasoning when the server split it off."""
    if reasoning is None:
        m = _THINK.match(content)
        if m:
            reasoning, content = m.group(1), content[m.end() :]
    if reasoning is None:
        return content, None
    reasoning = reasoning.strip()
    if markup == "think":
        return f"<think>{reasoning}</think>{content}", reasoning
    return f"{reasoning}\n{content.lstrip()}", reasoning


def chat_record_traces(
    record: object,
    task: TaskSource,
    settings: Settings,
    line_key: str,
    lookup=None,  # noqa: ANN001
) -> list[dict]:
    """Trace rows from one chat-completions log record; raises RecordError with a reason code.

    `lookup` (question -> Problem | None) defaults to task.lookup; Ingestor passes a cached one."""
    lookup = lookup or task.lookup
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    ts = _timestamp(record)
    if not settings.window.contains(ts):
        raise RecordError(
            "outside_window", f"{ts.isoformat()} is outside [{settings.window.start}, {settings.window.end})"
        )
    request = _get(record, "request", dict, "request")
    response = _get(record, "response", dict, "response")
    messages = _get(request, "messages", list, "request.messages")
    question = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RecordError("wrong_type", f"'request.messages[{i}]' must be an object")
        if msg.get("role") == "user":
            question = _text(msg.get("content"), f"request.messages[{i}].content")
    if question is None:
        raise RecordError("no_user_message", "request.messages has no user turn")
    choices = _get(response, "choices", list, "response.choices")
    if not choices:
        raise RecordError("missing_field", "'response.choices' is empty")
    user_id = record.get("user_id")
    workload = record.get("workload_id")
    for key, value in (("user_id", user_id), ("workload_id", workload), ("request_id", record.get("request_id"))):
        if value is not None and not isinstance(value, str):
            raise RecordError("wrong_type", f"'{key}' must be a string, got {type(value).__name__}")
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RecordError("wrong_type", f"'metadata' must be an object, got {type(metadata).__name__}")
    reference = metadata.get("reference_answer")
    if reference is not None and not isinstance(reference, str | int | float):
        raise RecordError("wrong_type", "'metadata.reference_answer' must be a string or a number")
    model = response.get("model") or request.get("model") or "unknown"
    if not isinstance(model, str):
        raise RecordError("wrong_type", f"'model' (response or request) must be a string, got {type(model).__name__}")
    version = metadata.get("model_version") or "unknown"
    if isinstance(version, bool) or not isinstance(version, (str, int, float)):
        raise RecordError("wrong_type", "'metadata.model_version' must be a string or a number")
    usage = response.get("usage")
    if usage is None:
        usage = {}
    elif not isinstance(usage, dict):
        raise RecordError("wrong_type", f"'response.usage' must be an object, got {type(usage).__name__}")
    tokens = None
    for key in _USAGE_COUNTS:
        if (count := usage.get(key)) is not None:
            count = _count(count, f"response.usage.{key}")
            if key == "completion_tokens" and len(choices) == 1:
                tokens = count
    problem = lookup(question)
    if reference is None and problem is not None:
        reference = problem.reference
    prompt = problem.prompt if problem is not None else task.prompt_for(question)
    request_id = record.get("request_id") or line_key
    rows = []
    for j, choice in enumerate(choices):
        where = f"response.choices[{j}]"
        if not isinstance(choice, dict):
            raise RecordError("wrong_type", f"'{where}' must be an object")
        index = choice.get("index")
        index = j if index is None else _count(index, f"{where}.index")
        message = _get(choice, "message", dict, f"{where}.message")
        content = _text(
            message.get("content") if message.get("content") is not None else "", f"{where}.message.content"
        )
        reasoning = message.get("reasoning_content", message.get("reasoning"))
        if reasoning is not None and not isinstance(reasoning, str):
            raise RecordError("wrong_type", f"'{where}.message.reasoning_content' must be a string")
        completion, split_reasoning = _completion(reasoning, content, settings.reasoning_markup)
        if not completion.strip():
            raise RecordError("empty_completion", f"'{where}' has no content and no reasoning")
        parsed = task.parse(completion)
        rows.append(
            {
                "trace_id": hashlib.sha256(f"{settings.cycle}\x1f{request_id}\x1f{j}".encode()).hexdigest()[:24],
                "cycle": settings.cycle,
                "source": "production",
                "model_name": model,
                "model_version": str(version),
                "problem_id": problem.problem_id if problem is not None else None,
                "suite": problem.suite if problem is not None else None,
                "prompt": prompt,
                "completion": completion,
                "reasoning": split_reasoning if split_reasoning is not None else parsed.reasoning,
                "answer": parsed.answer,
                "reference_answer": None if reference is None else str(reference),
                "correct": None,
                "verifier": None,
                "verdict": None,
                "tokens": tokens if tokens is not None else len(completion.split()),
                "mean_logprob": None,
                "finish_reason": choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
                "sample_index": index,
                "created_at": ts,
                "workload_id": workload,
                "user_id": user_id,
                "request_id": request_id,
            }
        )
    return rows


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _repeated_key(raw: bytes, record: object) -> RecordError | None:
    """An `ambiguous_record` error when a key repeats in any object of the line; orjson keeps the last.

    The common path is a cheap exact test: every key-value pair has one colon outside strings, and
    orjson.dumps writes each colon inside a string as is, so the line and the re-serialized record hold
    the same number of colons exactly when no pair was dropped - unless the line escapes a colon as
    \\u003a. Only then, or when the counts differ, json.loads with a pairs hook finds the key. A line that
    orjson itself wrote (our gateway's capture) is its own re-serialization and needs no count at all."""
    if not isinstance(record, dict):
        return None  # not_an_object says more
    try:
        again = orjson.dumps(record)
    except orjson.JSONEncodeError:  # nested deeper than orjson.dumps goes (255): only the slow check can tell
        again = None
    if again is not None:
        if raw.startswith(again) and not raw[len(again) :].strip():  # written by orjson, as our gateway does
            return None
        if raw.count(b":") == again.count(b":") and (
            b"\\u003" not in raw or (b"\\u003a" not in raw and b"\\u003A" not in raw)
        ):
            return None
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as rep:
        key = f"key {rep.key!r}" if rep.key in _KNOWN_KEYS else f"a key of {len(rep.key)} chars"
        return RecordError("ambiguous_record", f"{key} repeats in one object (which value is meant?)")
    except RecursionError:
        return RecordError("bad_json", "nested too deep to check for repeated keys")
    return None


def _excerpt(raw: bytes) -> str:
    try:
        from flywheel_dagster.curation.pii import redact

        # Redact a generous head first, then cut: cut first, and a card or address split by the cut is no
        # longer recognised, so its first half would stay ("4111 1111 ").
        head = raw[: EXCERPT_BYTES * 32].decode("utf-8", errors="replace")
        return redact(head)[0][:EXCERPT_BYTES]
    except Exception:  # noqa: BLE001 - never let the quarantine fail; never fall back to unredacted text
        return ""


def _user_id_of(raw: bytes) -> str | None:
    m = re.search(rb'"user_id"\s*:\s*"([^"\\]{1,200})"', raw)
    return m.group(1).decode("utf-8", errors="replace") if m else None


def _where(err: Exception) -> str:
    """An unexpected error's type and the place it was raised, without its message (that may quote content)."""
    frames = traceback.extract_tb(err.__traceback__)
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}{at}"


def _row_bytes(row: dict) -> bytes:
    try:
        return orjson.dumps(row, default=str)
    except Exception:  # noqa: BLE001 - an excerpt is a courtesy
        return b""


class _Inflater(io.RawIOBase):
    """A gzip file's decompressed bytes (every member, zero padding between allowed), inflated in small
    steps. Where the stream is damaged it first returns every byte that inflates before the damage, then
    raises (gzip.GzipFile drops what the failing read had inflated): a flipped bit costs the lines from the
    damage on, no more."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflate = None  # the member being inflated; None between members
        self._input = b""  # compressed bytes not yet inflated
        self._careful = False  # replaying the failing input a byte at a time, to find where the damage is

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # noqa: ANN001 - a writable buffer
        while True:
            if not self._input:
                self._input = self._raw.read(_GZIP_STEP)
                if not self._input:
                    if self._inflate is not None:
                        raise EOFError("the file ends inside a gzip member (truncated)")
                    return 0
            if self._inflate is None:
                self._input = self._input.lstrip(b"\x00")
                if not self._input:
                    continue
                self._inflate = zlib.decompressobj(31)
            inflate = self._inflate
            if self._careful:
                step, rest, saved = self._input[:1], self._input[1:], None
            else:
                step, rest, saved = self._input, b"", inflate.copy()
            try:
                out = inflate.decompress(step, len(buf))
            except zlib.error:
                if saved is None:
                    raise
                self._inflate, self._careful = saved, True
                continue
            self._input = inflate.unconsumed_tail + rest
            if inflate.eof:
                self._input = inflate.unused_data + self._input
                self._inflate, self._careful = None, False
            if out:
                buf[: len(out)] = out
                return len(out)


def _lines(stream: BinaryIO, limit: int) -> Iterator[tuple[bytes, int]]:
    """(line, its length without the newline). A line longer than `limit` is never held whole: it comes
    back as its head (32 x EXCERPT_BYTES) with its full length, the rest read and dropped in chunks."""
    readline = stream.readline
    while raw := readline(limit + 1):
        if raw.endswith(b"\n"):
            yield raw, len(raw) - 1
            continue
        if len(raw) <= limit:  # the last line, without a newline
            yield raw, len(raw)
            continue
        size, head = len(raw), raw[: EXCERPT_BYTES * 32]  # enough to redact before the excerpt is cut
        del raw
        while chunk := readline(_SKIP_BYTES):
            if chunk.endswith(b"\n"):
                size += len(chunk) - 1
                break
            size += len(chunk)
        yield head, size


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
    for f in INGEST_SCHEMA:
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


class Ingestor:
    """Streams log files into batches of trace rows and quarantine rows (bounded memory)."""

    def __init__(self, task: TaskSource, settings: Settings, batch_rows: int = 8192) -> None:
        self.task = task
        self.settings = settings
        self.batch_rows = batch_rows
        self.stats = IngestStats()
        self._problems: dict[str, object] = {}
        self._pending: list[dict] = []  # quarantine rows not handed out yet

    def _lookup(self, question: str):  # noqa: ANN202 - Problem | None
        """task.lookup, memoized: production questions repeat (bounded, so memory stays flat)."""
        try:
            return self._problems[question]
        except KeyError:
            problem = self.task.lookup(question)
            if len(self._problems) < 200_000:
                self._problems[question] = problem
            return problem

    def _quarantine(self, file: str, line: int, reason: str, detail: str, raw: bytes, lines: int = 1) -> None:
        """One quarantine entry standing for `lines` lines (more than one: a file's or row group's rest)."""
        row = {
            "file": file,
            "line": line,
            "reason": reason,
            "detail": detail,
            "excerpt": _excerpt(raw),
            "user_id": _user_id_of(raw),
        }
        self._pending.append(row)
        self.stats.quarantined[reason] += lines

    def _unreadable(self, file: str, line: int, err: Exception, detail: str = "", lines: int = 1) -> None:
        self.stats.lines_read += lines
        self._quarantine(file, line, "unreadable_file", f"{detail}{type(err).__name__}: {err}"[:300], b"", lines)

    def _take_quarantine(self) -> list[dict]:
        out, self._pending = self._pending, []
        return out

    def batches(self, files: list[str]) -> Iterator[tuple[list[dict], list[dict]]]:
        """(trace rows, quarantine rows) chunks, each at most about batch_rows traces and quarantine rows.

        Raises nothing for what a file holds: a line that cannot be used is quarantined, a damaged or
        vanished file quarantines its rest, a path that is not a log file (and `files.skipped`, when
        `files` comes from find_log_files) is counted in stats.files_skipped."""
        traces: list[dict] = []
        self.stats.files_skipped.extend(_shown(p) for p in getattr(files, "skipped", ()))
        for path in map(os.fspath, files):
            kind = _log_kind(path)
            if kind is None or (os.path.exists(path) and not os.path.isfile(path)):
                self.stats.files_skipped.append(_shown(path))
                continue
            self.stats.files += 1
            for rows in self._parquet_traces(path) if kind == "parquet" else self._jsonl_traces(path):
                traces.extend(rows)
                if len(traces) >= self.batch_rows or len(self._pending) >= self.batch_rows:
                    yield traces, self._take_quarantine()
                    traces = []
        if traces or self._pending:
            yield traces, self._take_quarantine()

    def _jsonl_traces(self, path: str) -> Iterator[list[dict]]:
        shown = _shown(path)
        name = Path(shown).name
        limit = self.settings.max_record_bytes
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; opening is what may fail
        except (OSError, ValueError) as err:  # ValueError: a NUL in the path
            self._unreadable(shown, 0, err)
            return
        out: list[dict] = []
        line_no = 0  # physical lines, blank ones included, so a quarantined line is found where it says
        with f:
            lines = _lines(io.BufferedReader(_Inflater(f), 1 << 16) if path.endswith(".gz") else f, limit)
            while True:
                # Reading and using a line fail apart: damage ends the file, a bad line only itself.
                try:
                    item = next(lines, None)
                except Exception as err:  # noqa: BLE001 - zlib.error, EOFError, OSError, ...: the rest is lost
                    self._unreadable(shown, line_no + 1, err)
                    break
                if item is None:
                    break
                raw, size = item
                line_no += 1
                if size > limit:
                    self.stats.lines_read += 1
                    detail = f"{size} bytes > max_record_bytes {limit}"
                    self._quarantine(shown, line_no, "oversized_record", detail, raw)
                    continue
                if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]  # an editor's byte order mark: not part of the record
                if not raw.strip():
                    continue  # blank lines are not records
                self.stats.lines_read += 1
                try:
                    rows = self._line(shown, name, line_no, raw)
                except Exception as err:  # noqa: BLE001 - a bug met this line: count it and go on
                    self._quarantine(shown, line_no, "unexpected_error", _where(err), raw)
                    rows = None
                if rows:
                    out.extend(rows)
                    self.stats.lines_ingested += 1
                    self.stats.traces += len(rows)
                if len(out) >= self.batch_rows or len(self._pending) >= self.batch_rows:
                    yield out
                    out = []
        if out:
            yield out

    def _line(self, path: str, name: str, line_no: int, raw: bytes) -> list[dict] | None:
        try:
            record = orjson.loads(raw)  # orjson rejects invalid UTF-8 too; tell the two apart only on failure
        except orjson.JSONDecodeError as err:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                self._quarantine(path, line_no, "invalid_utf8", str(bad), raw)
                return None
            self._quarantine(path, line_no, "bad_json", str(err), raw)
            return None
        try:
            ambiguous = _repeated_key(raw, record)
            if ambiguous is not None:
                raise ambiguous
            return chat_record_traces(record, self.task, self.settings, f"{name}:{line_no}", self._lookup)
        except RecordError as err:
            self._quarantine(path, line_no, err.reason, err.detail, raw)
            return None

    def _parquet_traces(self, path: str) -> Iterator[list[dict]]:
        shown = _shown(path)
        try:
            pf = pq.ParquetFile(path, page_checksum_verification=True)
            names = set(pf.schema_arrow.names)
            groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        except Exception as err:  # noqa: BLE001 - any unreadable file is quarantined, never fatal
            self._unreadable(shown, 0, err)
            return
        missing = [f.name for f in INGEST_SCHEMA if not f.nullable and f.name != "cycle" and f.name not in names]
        if missing:
            if rows := sum(groups):
                self.stats.lines_read += rows
                self._quarantine(shown, 0, "missing_field", f"file lacks columns {missing} ({rows} rows)", b"", rows)
            return
        columns = [n for n in INGEST_SCHEMA.names if n in names and n != "cycle"]
        row = 0
        for g, group_rows in enumerate(groups):
            done, batches = 0, None
            while True:
                try:
                    batches = batches or pf.iter_batches(batch_size=self.batch_rows, row_groups=[g], columns=columns)
                    batch = next(batches, None)
                    rows = [] if batch is None else _batch_rows(batch)
                except Exception as err:  # noqa: BLE001 - a corrupt page: the row group's rest is lost
                    lost = max(group_rows - done, 1)
                    self._unreadable(shown, row + 1, err, f"row group {g}, {lost} rows: ", lost)
                    row += max(group_rows - done, 0)
                    break
                if batch is None:
                    break
                good = []
                for r, problem in rows:
                    if len(self._pending) >= self.batch_rows:
                        yield good
                        good = []
                    row += 1
                    done += 1
                    self.stats.lines_read += 1
                    try:
                        if problem is not None:
                            raise problem
                        good.append(_trace_row(r, self.settings))
                    except RecordError as err:
                        self._quarantine(shown, row, err.reason, err.detail, _row_bytes(r))
                        continue
                    except Exception as err:  # noqa: BLE001 - a bug met this row: count it and go on
                        self._quarantine(shown, row, "unexpected_error", _where(err), _row_bytes(r))
                        continue
                    self.stats.lines_ingested += 1
                    self.stats.traces += 1
                yield good


# Ingested traces keep who asked and through which workload (for erasure requests); neither column ever
# enters training text.
INGEST_SCHEMA = TRACE_SCHEMA


def to_table(rows: list[dict]) -> pa.Table:
    # Column by column: about twice as fast as Table.from_pylist on a batch of trace dicts.
    return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in INGEST_SCHEMA.names}, schema=INGEST_SCHEMA)


def quarantine_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
