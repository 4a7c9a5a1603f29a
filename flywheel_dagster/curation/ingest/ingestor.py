"""The Ingestor: log files streamed into batches of trace rows and quarantine rows, every line counted once."""

from __future__ import annotations

import codecs
import io
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel_dagster.curation.batching import Memo, gc_paused_batches
from flywheel_dagster.curation.ingest.chat import (
    CONTEXT_AT,
    TRACE_COLUMNS,
    RecordError,
    Settings,
    _repeated_key,
    chat_record_rows,
    with_context_pii,
)
from flywheel_dagster.curation.ingest.files import _log_kind, _shown
from flywheel_dagster.curation.ingest.parquet import _batch_rows, _trace_row
from flywheel_dagster.curation.ingest.streams import (
    _excerpt,
    _Inflater,
    _lines,
    _Range,
    _row_bytes,
    _user_id_of,
    _where,
)
from flywheel_dagster.records import INGEST_QUARANTINE
from flywheel_dagster.tasks.base import Problem, TaskSource
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

# The most characters of requests' other turns (chat.with_context_pii) the ingest holds before it searches them.
CONTEXT_CHARS = 4_000_000

QUARANTINE_TABLE = INGEST_QUARANTINE
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


@dataclass(frozen=True)
class Piece:
    """Lines of one log file that one worker ingests: bytes [start, stop) (stop None: to the end), which begin
    after `first_line` physical lines of the file. A whole file is Piece(path)."""

    path: str  # as given: what the quarantine's `file` shows, and a trace id's file name
    start: int = 0
    stop: int | None = None
    first_line: int = 0
    opened: str = ""  # the path to open, when another process opens it: absolute (a worker's directory differs)
    # A piece of an inflated gzip file (opened: its plain lines, see _gzip_pieces) may end with the quarantine
    # entry (reason, detail, raw) of the line after them, which its worker records as the local ingest does: a
    # line over max_record_bytes (never written out), or the damage that ends the file.
    tail_entry: tuple[str, str, bytes] | None = None

    @property
    def source(self) -> str:
        return self.opened or self.path


def _line_pieces(path: str, piece_bytes: int, block_bytes: int = 1 << 20) -> Iterator[Piece]:
    """An uncompressed JSON Lines file cut at the first line end after every `piece_bytes` bytes (a line longer
    than that makes its piece longer: the worker streams it with the size limit, never holding it whole)."""
    opened = os.path.abspath(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; opening is what may fail
    except (OSError, ValueError):
        yield Piece(path, opened=opened)  # the worker meets the same error and quarantines the file, as local does
        return
    start = first_line = 0  # the current piece's
    pos = lines = 0  # the block's offset in the file, and the line ends before it
    last: Piece | None = None  # the piece before the current one, handed out when the current one has lines
    with f:
        try:
            while block := f.read(block_bytes):
                at = 0  # where in the block the next cut may fall
                while (want := start + piece_bytes - pos) < len(block):
                    cut = block.find(b"\n", max(want, at))
                    if cut < 0:
                        break
                    if last is not None:
                        yield last
                    lines += block.count(b"\n", at, cut + 1)
                    last = Piece(path, start, pos + cut + 1, first_line, opened)
                    start, first_line, at = pos + cut + 1, lines, cut + 1
                lines += block.count(b"\n", at)
                pos += len(block)
        except OSError:
            pass  # a read error: the rest is one piece, whose worker meets the error and quarantines what follows
    if last is not None and pos == start:  # the file ends at the cut: the last piece reads to the end, whatever
        last, start, first_line = None, last.start, last.first_line  # was appended since
    if last is not None:
        yield last
    yield Piece(path, start, None, first_line, opened)


def _size(path: str) -> int:
    """A file's size, 0 when it cannot be read: such a file is ingested whole, and its worker quarantines what it
    cannot read, as the local ingest does."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _gzip_pieces(piece: Piece, piece_bytes: int, limit: int, folder: str) -> Iterator[Piece]:
    """A gzip file inflated here into plain pieces of whole lines, about piece_bytes each (files in `folder`), so
    its lines spread over the workers like a plain file's instead of going to one. The lines are read as the
    local ingest reads them (_Inflater, _lines with max_record_bytes `limit`), so they are the same lines: a line
    over the limit is not written out (a piece ends before it, with its quarantine entry as its tail, so a temporary
    file holds at most piece_bytes and one line of at most `limit`), and where the file is damaged the piece
    before carries the error. A file that cannot be opened stays whole; a failed write fails the step."""
    try:
        f = open(piece.source, "rb")  # noqa: SIM115 - closed below; opening is what may fail
    except (OSError, ValueError):
        yield piece  # its worker meets the same error and quarantines it, as the local ingest does
        return
    with f:
        lines_in = _lines(io.BufferedReader(_Inflater(f), 1 << 16), limit)
        first_line, ended = 0, False
        while not ended:
            fd, name = tempfile.mkstemp(suffix=".jsonl", dir=folder)
            size = lines = 0
            tail: tuple[str, str, bytes] | None = None
            with os.fdopen(fd, "wb") as out:
                while size < piece_bytes:
                    try:
                        item = next(lines_in, None)
                    except Exception as err:  # noqa: BLE001 - zlib.error, EOFError, OSError, ...: the rest is lost
                        tail, ended = ("unreadable_file", f"{type(err).__name__}: {err}"[:300], b""), True
                        break
                    if item is None:
                        ended = True
                        break
                    raw, length = item
                    if length > limit:
                        tail = ("oversized_record", f"{length} bytes > max_record_bytes {limit}", raw)
                        break
                    out.write(raw)
                    size += len(raw)
                    lines += 1
            if size == 0 and tail is None:
                os.unlink(name)
                break
            yield replace(piece, opened=name, first_line=first_line, tail_entry=tail)
            first_line += lines + (tail is not None)


@dataclass
class IngestStats:
    lines_read: int = 0
    lines_ingested: int = 0
    traces: int = 0
    files: int = 0
    # Traces whose request's other turns the PII detectors failed on (a bug to fix): their context_pii is null,
    # so a value named only there is not followed into them.
    contexts_unsearched: int = 0
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
            "contexts_unsearched": self.contexts_unsearched,
        }
        out.update({f"quarantine/{r}": self.quarantined.get(r, 0) for r in QUARANTINE_REASONS})
        return out


class Ingestor:
    """Streams log files into batches of trace rows and quarantine rows (bounded memory)."""

    def __init__(self, task: TaskSource, settings: Settings, batch_rows: int = 8192) -> None:
        self.task = task
        self.settings = settings
        self.batch_rows = batch_rows
        self.stats = IngestStats()
        self._problems: dict[str, Problem | None] = {}
        self._pending: list[dict] = []  # quarantine rows not handed out yet
        # The PII found in the requests' other turns, by their text (bounded: a system prompt repeats, a
        # conversation's history does not).
        self._contexts = Memo(10_000, 16_000_000, len)

    def _lookup(self, question: str) -> Problem | None:
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

    def tables(self, files: list[str]) -> Iterator[tuple[pa.Table, pa.Table]]:
        """(traces, quarantine) tables (TRACE_SCHEMA, QUARANTINE_SCHEMA), each at most about batch_rows rows.

        Raises nothing for what a file holds: a line that cannot be used is quarantined, a damaged or
        vanished file quarantines its rest, a path that is not a log file (and `files.skipped`, when
        `files` comes from find_log_files) is counted in stats.files_skipped."""
        yield from self.piece_tables(self.whole_files(files))

    def batches(self, files: list[str]) -> Iterator[tuple[list[dict], list[dict]]]:
        """tables(), as lists of row dicts (trace rows, quarantine rows)."""
        yield from gc_paused_batches(
            self._batches(self.whole_files(files)),
            lambda b: ([dict(zip(TRACE_COLUMNS, r, strict=True)) for r in b[0]], b[1]),
        )

    def piece_tables(self, pieces: Iterable[Piece]) -> Iterator[tuple[pa.Table, pa.Table]]:
        """tables() of the given pieces of log files, in their order (what a Ray ingest worker runs on its
        pieces; stats.files and files_skipped are the planner's, see whole_files and pieces)."""
        yield from gc_paused_batches(self._batches(pieces), lambda b: (rows_table(b[0]), quarantine_table(b[1])))

    def whole_files(self, files: list[str]) -> Iterator[Piece]:
        """Each log file as one piece; what is not a log file counted in stats.files_skipped."""
        self.stats.files_skipped.extend(_shown(p) for p in getattr(files, "skipped", ()))
        for path in map(os.fspath, files):
            kind = _log_kind(path)
            if kind is None or (os.path.exists(path) and not os.path.isfile(path)):
                self.stats.files_skipped.append(_shown(path))
                continue
            self.stats.files += 1
            yield Piece(path)

    def pieces(self, files: list[str], piece_bytes: int, inflate_into: str | None = None) -> Iterator[Piece]:
        """whole_files, with each uncompressed JSON Lines file larger than `piece_bytes` cut at line ends into
        pieces of about that size (each knows the lines before it, so a quarantined line and a trace id that
        falls back to the line's place come out as from the whole file). Reads the big files once to find line
        ends (about 3 GB/s from the page cache). Parquet files stay whole; so do gzip files, unless
        `inflate_into` names a folder: then a gzip file larger than piece_bytes / 8 is inflated here into plain
        pieces there (made as they are asked for; whoever ingests one may remove its file)."""
        for piece in self.whole_files(files):
            piece = replace(piece, opened=os.path.abspath(piece.path))
            if piece.path.endswith(".gz") and inflate_into is not None and _size(piece.path) > piece_bytes // 8:
                yield from _gzip_pieces(piece, piece_bytes, self.settings.max_record_bytes, inflate_into)
                continue
            if not piece.path.endswith(".jsonl"):
                yield piece
                continue
            yield from _line_pieces(piece.path, piece_bytes) if _size(piece.path) > piece_bytes else (piece,)

    def _batches(self, pieces: Iterable[Piece]) -> Iterator[tuple[list[tuple], list[dict]]]:
        traces: list[tuple] = []
        for piece in pieces:
            if _log_kind(piece.path) == "parquet":
                rows_of = self._parquet_traces(piece.path, piece.source)
            else:
                rows_of = self._jsonl_traces(
                    piece.path, piece.start, piece.stop, piece.first_line, piece.source, piece.tail_entry
                )
            for rows in rows_of:
                traces.extend(rows)
                if len(traces) >= self.batch_rows or len(self._pending) >= self.batch_rows:
                    yield traces, self._take_quarantine()
                    traces = []
        if traces or self._pending:
            yield traces, self._take_quarantine()

    def _jsonl_traces(
        self,
        path: str,
        start: int = 0,
        stop: int | None = None,
        first_line: int = 0,
        source: str = "",
        tail_entry: tuple[str, str, bytes] | None = None,
    ) -> Iterator[list[tuple]]:
        shown = _shown(path)
        name = Path(shown).name
        limit = self.settings.max_record_bytes
        try:
            f = open(source or path, "rb")  # noqa: SIM115 - closed below; opening is what may fail
            if start:
                f.seek(start)
        except (OSError, ValueError) as err:  # ValueError: a NUL in the path
            self._unreadable(shown, first_line + 1 if first_line else 0, err)
            return
        out: list[tuple] = []
        # Rows of `out` whose other turns' text is replaced by the PII found there (with_context_pii, a batch at
        # a time), and the characters of such text the rest hold: replaced early past CONTEXT_CHARS, so a batch
        # of long conversations does not hold them all.
        done = held = 0
        line_no = first_line  # physical lines, blank ones included, so a quarantined line is found where it says
        with f:
            if (source or path).endswith(".gz"):
                stream: BinaryIO = io.BufferedReader(_Inflater(f), 1 << 16)
            else:
                stream = f if stop is None else io.BufferedReader(_Range(f, stop - start), 1 << 16)
            lines = _lines(stream, limit)
            while True:
                # Reading and using a line fail apart: damage ends the file, a bad line only itself.
                try:
                    item = next(lines, None)
                except Exception as err:  # noqa: BLE001 - zlib.error, EOFError, OSError, ...: the rest is lost
                    self._unreadable(shown, line_no + 1, err)
                    break
                if item is None:
                    if tail_entry is not None:  # the line after this piece of an inflated gzip file (_gzip_pieces)
                        self.stats.lines_read += 1
                        self._quarantine(shown, line_no + 1, *tail_entry)
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
                    if (other := rows[0][CONTEXT_AT]) is not None:  # the record's other turns' text
                        held += len(other)
                        if held > CONTEXT_CHARS:
                            self.stats.contexts_unsearched += with_context_pii(out, self._contexts, done)
                            done, held = len(out), 0
                if len(out) >= self.batch_rows or len(self._pending) >= self.batch_rows:
                    if held:  # else no row from `done` on holds any
                        self.stats.contexts_unsearched += with_context_pii(out, self._contexts, done)
                    yield out
                    out, done, held = [], 0, 0
        if out:
            if held:
                self.stats.contexts_unsearched += with_context_pii(out, self._contexts, done)
            yield out

    def _line(self, path: str, name: str, line_no: int, raw: bytes) -> list[tuple] | None:
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
            return chat_record_rows(record, self.task, self.settings, f"{name}:{line_no}", self._lookup)
        except RecordError as err:
            self._quarantine(path, line_no, err.reason, err.detail, raw)
            return None

    def _parquet_traces(self, path: str, source: str = "") -> Iterator[list[tuple]]:
        shown = _shown(path)
        try:
            pf = pq.ParquetFile(source or path, page_checksum_verification=True)
            names = set(pf.schema_arrow.names)
            groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        except Exception as err:  # noqa: BLE001 - any unreadable file is quarantined, never fatal
            self._unreadable(shown, 0, err)
            return
        missing = [f.name for f in TRACE_SCHEMA if not f.nullable and f.name != "cycle" and f.name not in names]
        if missing:
            if rows := sum(groups):
                self.stats.lines_read += rows
                self._quarantine(shown, 0, "missing_field", f"file lacks columns {missing} ({rows} rows)", b"", rows)
            return
        columns = [n for n in TRACE_SCHEMA.names if n in names and n != "cycle"]
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
                        row_dict = _trace_row(r, self.settings)
                        good.append(tuple(row_dict[name] for name in TRACE_COLUMNS))
                    except RecordError as err:
                        self._quarantine(shown, row, err.reason, err.detail, _row_bytes(r))
                        continue
                    except Exception as err:  # noqa: BLE001 - a bug met this row: count it and go on
                        self._quarantine(shown, row, "unexpected_error", _where(err), _row_bytes(r))
                        continue
                    self.stats.lines_ingested += 1
                    self.stats.traces += 1
                yield good


def to_table(rows: list[dict]) -> pa.Table:
    # Column by column: about twice as fast as Table.from_pylist on a batch of trace dicts.
    return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in TRACE_SCHEMA.names}, schema=TRACE_SCHEMA)


def rows_table(rows: list[tuple]) -> pa.Table:
    """Trace rows as tuples in TRACE_SCHEMA's column order, as a table."""
    if not rows:
        return TRACE_SCHEMA.empty_table()
    columns = zip(*rows, strict=True)
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, TRACE_SCHEMA, strict=True)], schema=TRACE_SCHEMA
    )


def quarantine_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
