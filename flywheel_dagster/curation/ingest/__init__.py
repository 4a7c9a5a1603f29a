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

Modules: files.py (the window, finding log files, a file's kind), chat.py (chat-completions records into
trace rows, RecordError), streams.py (gzip, lines with a size limit, quarantine excerpts), parquet.py
(Parquet batches checked against the trace schema), ingestor.py (Ingestor, IngestStats, the quarantine's
reason codes and schema). Every name is importable from `flywheel_dagster.curation.ingest`.
"""

import json  # noqa: F401 - tests patch `ingest.json.loads` (the slow repeated-key check in chat.py)

from flywheel_dagster.curation.ingest.chat import (
    INT32_MAX,
    RecordError,
    Settings,
    _repeated_key,
    chat_record_traces,
)
from flywheel_dagster.curation.ingest.files import LogFiles, Window, find_log_files
from flywheel_dagster.curation.ingest.ingestor import (
    QUARANTINE_REASONS,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
    Ingestor,
    IngestStats,
    Piece,
    quarantine_table,
    to_table,
)
from flywheel_dagster.curation.ingest.parquet import FLOAT32_MAX
from flywheel_dagster.curation.ingest.streams import EXCERPT_BYTES, _Inflater

__all__ = [
    "EXCERPT_BYTES",
    "FLOAT32_MAX",
    "INT32_MAX",
    "QUARANTINE_REASONS",
    "QUARANTINE_SCHEMA",
    "QUARANTINE_TABLE",
    "IngestStats",
    "Ingestor",
    "LogFiles",
    "Piece",
    "RecordError",
    "Settings",
    "Window",
    "_Inflater",
    "_repeated_key",
    "chat_record_traces",
    "find_log_files",
    "quarantine_table",
    "to_table",
]
