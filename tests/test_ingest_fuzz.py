"""The ingest against hostile input: no line or file fails a quarter, and no line disappears.

Properties (hypothesis, derandomized so CI is deterministic): generated logs of good lines and bad lines
of every kind, written plain or gzipped, then damaged (truncation, bit flips, garbage), always give
`lines_read = lines_ingested + lines_quarantined` per file, every good line that survives intact
ingested, no exception, and rows that convert to the trace and quarantine schemas. Then a corpus of
nasty files, one for each failure seen from outside.
"""

import codecs
import gzip
import io
import itertools
import json
import os
import tracemalloc
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel_dagster.curation import ingest, loggen
from flywheel_dagster.tasks.playground import PlaygroundTask
from flywheel_dagster.traces.schema import TRACE_SCHEMA

START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
IN_WINDOW = datetime(2026, 2, 3, 10, tzinfo=UTC)
LIMIT = 4096  # max_record_bytes in the properties: oversized lines stay cheap to make
BATCH = 16
INT32_MAX = 2**31 - 1  # the trace schema's tokens and sample_index
TASK = PlaygroundTask()
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
_names = itertools.count()


def ingest_files(paths, limit=LIMIT, batch_rows=BATCH, task=TASK):
    """Run the ingest as the asset does: every batch converted to both tables, the invariant checked."""
    ing = ingest.Ingestor(task, ingest.Settings("2026-01-01", ingest.Window(START, END), limit), batch_rows=batch_rows)
    traces, quarantine = [], []
    for t, q in ing.batches(paths if hasattr(paths, "skipped") else [str(p) for p in paths]):
        ingest.to_table(t)
        ingest.quarantine_table(q)
        assert len(q) <= batch_rows  # quarantine rows are streamed too, never held for a whole file
        traces += t
        quarantine += q
    s = ing.stats
    assert s.lines_read == s.lines_ingested + s.lines_quarantined
    return s, traces, quarantine


def good(i: int, **kw) -> dict:
    kw = {"reasoning": "1+2=3", "timestamp": IN_WINDOW, "user_id": f"u-{i}", "request_id": f"r-{i}", **kw}
    return loggen.record("Q:1+2", "A:3", **kw)


def ids(traces) -> set[str]:
    return {t["request_id"] for t in traces}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def write(workdir, data: bytes, suffix: str = ".jsonl"):
    path = workdir / f"log-{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


# --- generated logs -------------------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=24)
WINDOW_SECONDS = int((END - START).total_seconds())
ZONES = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9, minutes=30))]


class Pairs(list):
    """A JSON object written with its pairs as given, repeated keys included."""


def dumps_pairs(v, sep: str = ":") -> str:
    if isinstance(v, dict):
        v = Pairs(v.items())
    if isinstance(v, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}{sep}{dumps_pairs(x, sep)}" for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dumps_pairs(x, sep) for x in v) + "]"
    return json.dumps(v)


def serialize(rec, style: str) -> bytes:
    if style == "ascii":  # \uXXXX escapes for everything beyond ASCII
        return json.dumps(rec).encode()
    if style == "spaced":
        return json.dumps(rec, separators=(" , ", " : "), ensure_ascii=False).encode()
    line = orjson.dumps(rec)
    if style == "colon_escaped":  # a colon inside a string written as \u003a
        escaped = line.replace(b"A:", b"A\\u003a")
        return escaped if orjson.loads(escaped) == rec else line
    return line


def good_record(draw, i: int) -> dict:
    ts = (START + timedelta(seconds=draw(st.integers(0, WINDOW_SECONDS - 1)))).astimezone(draw(st.sampled_from(ZONES)))
    reasoning = draw(st.none() | texts)
    rec = loggen.record(
        draw(texts),
        f"A:{draw(texts)}",
        reasoning=reasoning,
        inline_think=draw(st.booleans()),
        timestamp=ts,
        user_id=draw(st.none() | texts),
        request_id=f"r-{i}",
        model_version=draw(st.none() | st.sampled_from(["3", "7b"])),
    )
    if draw(st.booleans()):
        rec["request"]["messages"][-1]["content"] = [{"type": "text", "text": draw(texts)}]
    if draw(st.booleans()):  # Unix seconds instead of an ISO timestamp
        del rec["timestamp"]
        rec["response"]["created"] = int(ts.timestamp()) if draw(st.booleans()) else ts.timestamp()
    usage = rec["response"]["usage"]
    usage["completion_tokens"] = draw(st.integers(0, INT32_MAX))
    if draw(st.booleans()):
        usage["prompt_tokens"] = draw(st.integers(0, INT32_MAX))
    n = draw(st.integers(1, 3))
    choice = rec["response"]["choices"][0]
    rec["response"]["choices"] = [{**choice, "index": k} for k in range(n)]
    return rec


def at(rec: dict, where: str):
    """The object at a dotted path of a record (choices.0.message)."""
    obj = rec
    for part in where.split("."):
        obj = obj[int(part)] if part.isdigit() else obj[part]
    return obj


HUGE = st.integers(2**31, 2**80) | st.integers(-(2**80), -1)
BAD_CREATED = st.sampled_from([1e20, -1e13, 1e17, 2**63, 253_402_300_800, -62_135_596_801, 1e308])
BAD_KINDS = [
    "bad_json",
    "invalid_utf8",
    "not_an_object",
    "oversized_record",
    "ambiguous_record",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "bad_timestamp",
    "outside_window",
    "no_user_message",
    "empty_completion",
]


def bad_line(draw, i: int) -> tuple[bytes, str]:
    """A line with one defect, and the reason the ingest must give."""
    rec = good_record(draw, i)
    kind = draw(st.sampled_from(BAD_KINDS))
    response, choice = rec["response"], rec["response"]["choices"][0]
    if kind == "bad_json":  # a line cut short: no proper prefix of an object is JSON
        line = orjson.dumps(rec)
        cut = line[: draw(st.integers(1, len(line) - 1))]
        try:
            cut.decode()
        except UnicodeDecodeError:
            return cut, "invalid_utf8"  # cut inside a character
        return cut, "bad_json"
    if kind == "invalid_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]))
        return orjson.dumps({**rec, "note": "\x01"}).replace(b"\\u0001", bad), kind
    if kind == "not_an_object":
        return orjson.dumps(draw(st.sampled_from([[rec], 1, "x", None, True]))), kind
    if kind == "oversized_record":
        if draw(st.booleans()):
            return b"\xff" * draw(st.integers(LIMIT + 1, 4 * LIMIT)), kind
        rec["metadata"] = {"pad": "x" * draw(st.integers(LIMIT, 20 * LIMIT))}
        return orjson.dumps(rec), kind
    if kind == "ambiguous_record":
        where = draw(st.sampled_from(["", "request", "response", "response.choices.0.message", "response.usage"]))
        obj = at(rec, where) if where else rec
        key = draw(st.sampled_from(sorted(obj)))
        pairs = Pairs(obj.items())
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(st.sampled_from([obj[key], "other", 7]))))
        if where:
            parent, _, last = where.rpartition(".")
            container = at(rec, parent) if parent else rec
            container[int(last) if last.isdigit() else last] = pairs
        line = dumps_pairs(pairs if not where else rec, draw(st.sampled_from([":", " : "]))).encode()
        return line.replace(b"A:", b"A\\u003a") if draw(st.booleans()) else line, kind
    if kind == "missing_field":
        what = draw(st.sampled_from(["request", "response", "messages", "choices", "message", "when"]))
        if what in ("request", "response"):
            del rec[what]
        elif what == "messages":
            del rec["request"]["messages"]
        elif what == "choices":
            response["choices"] = draw(st.sampled_from([[], None]))
        elif what == "message":
            del choice["message"]
        else:
            rec.pop("timestamp", None)
            response.pop("created", None)
        return orjson.dumps(rec), kind
    if kind == "wrong_type":
        what = draw(st.sampled_from(["messages", "user_id", "usage", "tokens", "index", "timestamp", "model"]))
        if what == "messages":
            rec["request"]["messages"] = "hi"
        elif what == "user_id":
            rec["user_id"] = draw(st.sampled_from([5, [], {"id": 1}, True]))
        elif what == "usage":
            response["usage"] = "42 tokens"
        elif what == "tokens":
            response["usage"]["completion_tokens"] = draw(st.sampled_from(["42", 4.5, True, [1]]))
        elif what == "index":
            choice["index"] = draw(st.sampled_from(["0", 0.5, False]))
        elif what == "timestamp":
            rec["timestamp"] = draw(st.sampled_from([1_770_000_000, ["2026-02-03"], True]))
        else:
            response["model"] = {"name": "m"}
        return orjson.dumps(rec), kind
    if kind == "out_of_range":
        what = draw(st.sampled_from(["tokens", "prompt_tokens", "index", "created", "edge"]))
        if what in ("tokens", "prompt_tokens"):
            response["usage"]["completion_tokens" if what == "tokens" else what] = draw(HUGE)
        elif what == "index":
            choice["index"] = draw(HUGE)
        elif what == "created":
            rec.pop("timestamp", None)
            response["created"] = draw(BAD_CREATED)
        else:
            rec["timestamp"] = draw(st.sampled_from(["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00"]))
        return json.dumps(rec).encode(), kind  # any integer, as Python writes it
    if kind == "bad_timestamp":
        rec["timestamp"] = draw(st.sampled_from(["yesterday", "2026-02-03T10:00:00", "", "2026-13-01T00:00:00Z"]))
        return orjson.dumps(rec), kind
    if kind == "outside_window":
        off = timedelta(seconds=draw(st.integers(0, 10**9)))
        rec["timestamp"] = (END + off if draw(st.booleans()) else START - off - timedelta(seconds=1)).isoformat()
        return orjson.dumps(rec), kind
    if kind == "no_user_message":
        for m in rec["request"]["messages"]:
            m["role"] = "system"
        return orjson.dumps(rec), kind
    for c in response["choices"]:  # empty_completion
        c["message"] = {"role": "assistant", "content": draw(st.sampled_from(["", "  ", "\n\t"]))}
    return orjson.dumps(rec), kind


@dataclass
class Log:
    data: bytes = b""
    records: int = 0  # non-blank lines
    reasons: Counter = field(default_factory=Counter)
    bad_at: list = field(default_factory=list)  # (line number, reason)
    good: dict = field(default_factory=dict)  # line bytes (no newline) -> request_id


@st.composite
def logs(draw, max_lines: int = 10) -> Log:
    log = Log()
    lines = []
    for i in range(draw(st.integers(0, max_lines))):
        what = draw(st.sampled_from(["good", "good", "bad", "blank"]))
        if what == "blank":
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t\r"])))
            continue
        log.records += 1
        if what == "good":
            line = serialize(
                good_record(draw, i), draw(st.sampled_from(["orjson", "ascii", "spaced", "colon_escaped"]))
            )
            log.good[line] = f"r-{i}"
        else:
            line, reason = bad_line(draw, i)
            log.reasons[reason] += 1
            log.bad_at.append((len(lines) + 1, reason))
        lines.append(line)
    log.data = b"\n".join(lines) + (b"\n" if lines and draw(st.booleans()) else b"")
    return log


def gzipped(data: bytes, draw) -> bytes:
    how = draw(st.sampled_from(["one", "members", "padded"]))
    if how == "one":
        return gzip.compress(data, mtime=0)
    if how == "members":  # concatenated gzip members, as `cat a.gz b.gz` makes
        cut = draw(st.integers(0, len(data)))
        return gzip.compress(data[:cut], mtime=0) + gzip.compress(data[cut:], mtime=0)
    return gzip.compress(data, mtime=0) + b"\x00" * draw(st.integers(1, 600))  # zero padding after the member


@settings(FUZZ, max_examples=150)
@given(log=logs(), gz=st.booleans(), data=st.data())
def test_every_generated_line_is_ingested_or_quarantined_with_its_reason(workdir, log, gz, data):
    path = write(workdir, gzipped(log.data, data.draw) if gz else log.data, ".jsonl.gz" if gz else ".jsonl")
    stats, traces, quarantine = ingest_files([path])
    assert stats.files == 1 and stats.lines_read == log.records
    assert ids(traces) == set(log.good.values()) and stats.lines_ingested == len(log.good)
    assert sorted((q["line"], q["reason"]) for q in quarantine) == sorted(log.bad_at)  # the right line, the right code
    assert Counter(q["reason"] for q in quarantine) == log.reasons == stats.quarantined


def _damage(data: bytes, draw) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["truncate", "flip", "byte", "insert", "delete"]))
        if what == "truncate":
            data = data[:k]
        elif what == "flip" and k < len(data):
            data = data[:k] + bytes([data[k] ^ (1 << draw(st.integers(0, 7)))]) + data[k + 1 :]
        elif what == "byte" and k < len(data):
            data = data[:k] + bytes([draw(st.sampled_from([0, 10, 34, 92, 0x7B, 0xFF, 0xC3]))]) + data[k + 1 :]
        elif what == "insert":
            data = data[:k] + draw(st.binary(min_size=1, max_size=8)) + data[k:]
        else:
            data = data[:k] + data[k + draw(st.integers(1, 40)) :]
    return data


@settings(FUZZ, max_examples=150)
@given(log=logs(), data=st.data())
def test_damaged_plain_logs_keep_every_intact_line(workdir, log, data):
    damaged = _damage(log.data, data.draw)
    stats, traces, _ = ingest_files([write(workdir, damaged)])
    physical = damaged.split(b"\n")
    if physical and physical[-1] == b"":
        physical.pop()
    assert stats.lines_read == sum(1 for line in physical if line.strip() or len(line) > LIMIT)
    intact = {log.good[line] for line in physical if line in log.good}
    assert intact <= ids(traces)


def inflatable_prefix(gz: bytes) -> tuple[bytes, bool]:
    """What inflates of a gzip stream before its first damage, fed a byte at a time (the oracle), and
    whether the stream was whole."""
    out, d = [], None
    for i in range(len(gz)):
        if d is None:
            if gz[i] == 0:
                continue  # padding between members
            d = zlib.decompressobj(31)
        try:
            out.append(d.decompress(gz[i : i + 1]))
        except zlib.error:
            return b"".join(out), False
        if d.eof:
            d = None
    return b"".join(out), d is None


@settings(FUZZ, max_examples=100)
@given(log=logs(max_lines=16), data=st.data())
def test_damaged_gzip_keeps_every_line_that_inflates_before_the_damage(workdir, log, data):
    damaged = _damage(gzipped(log.data, data.draw), data.draw)
    stats, traces, quarantine = ingest_files([write(workdir, damaged, ".jsonl.gz")])
    prefix, clean = inflatable_prefix(damaged)
    same = next((i for i, (a, b) in enumerate(zip(prefix, log.data, strict=False)) if a != b), None)
    common = log.data[: min(len(prefix), len(log.data)) if same is None else same]
    whole = common.split(b"\n")[:-1]  # lines whose newline is there too
    if clean and prefix == log.data:  # the last line as well, newline or not
        whole = log.data.split(b"\n")
    assert {log.good[line] for line in whole if line in log.good} <= ids(traces)
    assert sum(q["reason"] == "unreadable_file" for q in quarantine) <= 1


@settings(FUZZ, max_examples=60)
@given(data=st.binary(max_size=3000), members=st.integers(1, 3), buffer=st.integers(1, 70_000), pad=st.booleans())
def test_the_inflater_reads_what_gzip_wrote(data, members, buffer, pad):
    cuts = sorted({0, len(data), *(len(data) * k // members for k in range(members))})
    gz = b"".join(gzip.compress(data[a:b], mtime=0) for a, b in itertools.pairwise(cuts))
    gz += b"\x00" * 37 if pad else b""
    assert io.BufferedReader(ingest._Inflater(io.BytesIO(gz)), buffer).read() == data


# Parquet rows with one defect each; whole columns of the wrong type.
ROW_DEFECTS = {
    "tokens_huge": ("tokens", 2**40, "out_of_range"),
    "tokens_negative": ("tokens", -3, "out_of_range"),
    "index_negative": ("sample_index", -1, "out_of_range"),
    "logprob_huge": ("mean_logprob", 1e39, "out_of_range"),
    "late": ("created_at", datetime(2026, 6, 1, tzinfo=UTC), "outside_window"),
    "empty": ("completion", " ", "empty_completion"),
    "no_prompt": ("prompt", None, "missing_field"),
    "no_time": ("created_at", None, "missing_field"),
}
COLUMN_TYPES = {  # the defect a column of the wrong type gives every row
    "tokens": (pa.string(), "wrong_type"),
    "correct": (pa.string(), "wrong_type"),
    "sample_index": (pa.float64(), None),  # integral floats are counts
    "created_at": (pa.timestamp("ns"), None),  # naive nanoseconds: UTC, truncated to microseconds
}


def trace_row(i: int, **kw) -> dict:
    row = {n: None for n in TRACE_SCHEMA.names}
    row.update(
        trace_id=f"t-{i}",
        cycle="x",
        source="production",
        model_name="m",
        model_version="1",
        prompt="Q:1+2\n",
        completion="1+2=3\nA:3",
        reasoning="1+2=3",
        answer="3",
        tokens=5,
        sample_index=0,
        created_at=IN_WINDOW,
        correct=True,
        mean_logprob=-0.5,
    )
    row.update(kw)
    return row


@settings(FUZZ, max_examples=60)
@given(
    defects=st.lists(st.none() | st.sampled_from(sorted(ROW_DEFECTS)), max_size=12),
    retyped=st.sets(st.sampled_from(sorted(COLUMN_TYPES))),
    group=st.integers(1, 5),
)
def test_parquet_rows_are_checked_value_by_value(workdir, defects, retyped, group):
    rows, expected = [], []
    for i, d in enumerate(defects):
        col, value, reason = ROW_DEFECTS[d] if d else (None, None, None)
        rows.append(trace_row(i, **({col: value} if col else {})))
        expected.append({reason} - {None})
    fields = []
    for f in TRACE_SCHEMA:
        kind = COLUMN_TYPES[f.name][0] if f.name in retyped else f.type
        if pa.types.is_integer(f.type):  # room for the out-of-range values
            kind = pa.int64() if f.name not in retyped else kind
        if f.name == "mean_logprob":
            kind = pa.float64()
        fields.append(pa.field(f.name, kind))
    columns = {}
    for f in fields:
        values = [r[f.name] for r in rows]
        if pa.types.is_string(f.type) and f.name in retyped:
            values = [None if v is None else str(v) for v in values]
        if f.name == "created_at" and f.name in retyped:
            values = [None if v is None else v.replace(tzinfo=None) for v in values]
        columns[f.name] = pa.array(values, f.type)
    for e, r in zip(expected, rows, strict=True):
        e.update(COLUMN_TYPES[c][1] for c in retyped if COLUMN_TYPES[c][1] and r[c] is not None)
    path = workdir / f"rows-{next(_names)}.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=group)
    stats, traces, quarantine = ingest_files([path])
    assert stats.lines_read == len(rows)
    assert {t["trace_id"] for t in traces} == {f"t-{i}" for i, e in enumerate(expected) if not e}
    for q in quarantine:
        assert q["reason"] in expected[q["line"] - 1]
    assert len(quarantine) == sum(1 for e in expected if e)


# --- the nasty corpus: one file for each failure seen from outside ------------------------------------


def jsonl(lines) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


def _with(rec: dict, where: str, value) -> dict:
    parent, _, last = where.rpartition(".")
    at(rec, parent)[int(last) if last.isdigit() else last] = value
    return rec


def big_int_line(i: int, where: str, value: int) -> bytes:
    return json.dumps(_with(good(i), where, value)).encode()


@pytest.fixture(scope="module")
def nasty(tmp_path_factory):
    """A folder of nasty logs, by finding; the tests below read them one by one and all together."""
    root = tmp_path_factory.mktemp("nasty_logs")
    files = {}

    def put(name: str, data: bytes) -> None:
        files[name] = root / name
        files[name].write_bytes(data)

    put(
        "int32.jsonl",
        jsonl(
            [
                good(0),
                big_int_line(1, "response.usage.completion_tokens", 2**40),
                big_int_line(2, "response.usage.completion_tokens", 2**31),
                _with(good(3), "response.usage.completion_tokens", -1),
                big_int_line(4, "response.choices.0.index", 2**33),
                _with(good(5), "response.choices.0.index", -1),
                _with(good(6), "response.usage.prompt_tokens", -5),
                big_int_line(7, "response.usage.completion_tokens", 10**30),
                good(8),
            ]
        ),
    )
    created = []
    for i, value in enumerate([1e17, 1e20, -1e13]):
        rec = good(100 + i)
        del rec["timestamp"]
        rec["response"]["created"] = value
        created.append(rec)
    put("created.jsonl", jsonl([good(0), *created, *(good(1 + i) for i in range(1000))]))
    edges = ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]
    put(
        "edges.jsonl",
        jsonl([good(0), *(good(1 + i, timestamp=IN_WINDOW) | {"timestamp": e} for i, e in enumerate(edges))]),
    )
    plain = jsonl(loggen.synthetic_records(TASK, TASK.traffic(0, 50), 2000, START, END, seed=5))
    whole = gzip.compress(plain, mtime=0)
    # The first flip after byte 1000 that zlib meets as in the wild (possible only in the first 32 KiB of text).
    for at_bit in range(8000, len(whole) * 8):
        gz = bytearray(whole)
        gz[at_bit // 8] ^= 1 << at_bit % 8
        try:
            zlib.decompress(bytes(gz), 31)
        except zlib.error as err:
            if "invalid distance too far back" in str(err):
                break
    put("flipped.jsonl.gz", bytes(gz))
    dup = orjson.dumps(good(1))
    put(
        "repeated_keys.jsonl",
        jsonl(
            [
                good(0),
                dup.replace(b'{"timestamp"', b'{"user_id":"u-999","timestamp"', 1),  # user_id twice
                dup.replace(b'"role":"assistant"', b'"role":"assistant","content":"A:4"', 1),  # nested
                dup.replace(b'{"timestamp"', b'{"request_id" : "r-x" , "timestamp"', 1),  # spaced
                # A repeated key and an escaped colon: the colon counts tie, only the slow check sees it.
                dup.replace(b'{"timestamp"', b'{"user_id":"u-1","timestamp"', 1).replace(b"A:3", b"A\\u003a3"),
                dup.replace(b'{"timestamp"', b'{"jane.doe@example.com":1,"jane.doe@example.com":2,"timestamp"', 1),
                orjson.dumps(good(2)).replace(b"A:3", b"A\\u003a3"),  # an escaped colon, no repeat: good
                json.dumps(good(3), separators=(" , ", " : ")).encode(),  # spaces around colons: good
            ]
        ),
    )
    return root, files, {"flipped.jsonl.gz": plain}


def test_integers_beyond_int32_and_negative_counts_are_out_of_range(nasty):
    stats, traces, quarantine = ingest_files([nasty[1]["int32.jsonl"]])
    assert ids(traces) == {"r-0", "r-8"}  # and both tables converted (ingest_files)
    assert [(q["line"], q["reason"]) for q in quarantine] == [(n, "out_of_range") for n in range(2, 9)]
    assert "negative" in quarantine[2]["detail"] and "int32" in quarantine[0]["detail"]


def test_created_far_out_of_range_costs_its_line_only(nasty):
    stats, traces, quarantine = ingest_files([nasty[1]["created.jsonl"]], batch_rows=8192)
    assert stats.lines_ingested == 1001 and stats.lines_read == 1004
    assert [(q["line"], q["reason"]) for q in quarantine] == [
        (2, "out_of_range"),
        (3, "out_of_range"),
        (4, "out_of_range"),
    ]


def test_iso_timestamps_at_the_calendar_edges(nasty):
    _, traces, quarantine = ingest_files([nasty[1]["edges.jsonl"]])
    assert ids(traces) == {"r-0"}
    assert [q["reason"] for q in quarantine] == ["out_of_range", "out_of_range", "outside_window", "outside_window"]


def test_a_flipped_bit_in_gzip_keeps_every_line_before_the_damage(nasty):
    path = nasty[1]["flipped.jsonl.gz"]
    stats, traces, quarantine = ingest_files([path])
    plain = nasty[2]["flipped.jsonl.gz"]
    intact, _ = inflatable_prefix(path.read_bytes())
    same = next((i for i, (a, b) in enumerate(zip(intact, plain, strict=False)) if a != b), len(intact))
    before = plain[:same].count(b"\n")
    assert 0 < before < 2000 and ids(traces) >= {f"req-5-{i}" for i in range(before)}
    unreadable = [q for q in quarantine if q["reason"] == "unreadable_file"]
    assert len(unreadable) == 1 and "invalid distance too far back" in unreadable[0]["detail"]


def test_repeated_keys_are_ambiguous_and_named_only_when_known(nasty):
    _, traces, quarantine = ingest_files([nasty[1]["repeated_keys.jsonl"]])
    assert ids(traces) == {"r-0", "r-2", "r-3"}
    assert [(q["line"], q["reason"]) for q in quarantine] == [(n, "ambiguous_record") for n in range(2, 7)]
    assert "'user_id'" in quarantine[0]["detail"] and "'content'" in quarantine[1]["detail"]
    assert "jane" not in quarantine[4]["detail"] and "20 chars" in quarantine[4]["detail"]


def test_the_repeated_key_check_is_cheap_on_the_common_path(monkeypatch):
    # json.loads (the slow, exact check) runs only when the cheap colon count says a key may repeat.
    lines = [orjson.dumps(good(i)) for i in range(50)] + [json.dumps(good(50), indent=None).encode()]
    calls = []
    monkeypatch.setattr(ingest.json, "loads", lambda *a, **k: calls.append(a) or json.JSONDecoder().decode("{}"))
    assert all(ingest._repeated_key(line, orjson.loads(line)) is None for line in lines) and not calls


def _parquet(path, rows, schema=None, **kw) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema or TRACE_SCHEMA), path, **kw)


def test_parquet_corrupt_page_behind_an_intact_footer(tmp_path):
    path = tmp_path / "corrupt.parquet"
    _parquet(path, [trace_row(i) for i in range(30)], row_group_size=10, compression="none", use_dictionary=False)
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset : column.data_page_offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    stats, traces, quarantine = ingest_files([path])
    assert {t["trace_id"] for t in traces} == {f"t-{i}" for i in [*range(10), *range(20, 30)]}
    assert [(q["line"], q["reason"]) for q in quarantine] == [(11, "unreadable_file")]
    assert stats.quarantined["unreadable_file"] == 10 and "10 rows" in quarantine[0]["detail"]


def test_parquet_columns_of_the_wrong_type_or_range_are_quarantined_per_row(tmp_path):
    schema, index = TRACE_SCHEMA, TRACE_SCHEMA.get_field_index
    strings = schema.set(index("tokens"), pa.field("tokens", pa.string()))
    strings = strings.set(index("correct"), pa.field("correct", pa.string()))
    _parquet(tmp_path / "strings.parquet", [trace_row(i, tokens="5", correct="yes") for i in range(3)], strings)
    wide = schema.set(index("tokens"), pa.field("tokens", pa.int64()))
    _parquet(tmp_path / "wide.parquet", [trace_row(10, tokens=2**40), trace_row(11, tokens=7)], wide)
    us = int(IN_WINDOW.timestamp() * 1_000_000)
    broken = pa.table(
        {
            **{f.name: pa.array([trace_row(20 + i)[f.name] for i in range(3)], f.type) for f in schema},
            "created_at": pa.array([us, 2**62, us], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "prompt": pa.array([b"Q:1+2\n", b"Q:2+2\n", b"Q:\xff\n"], pa.binary()).view(pa.string()),
        }
    )
    pq.write_table(broken, tmp_path / "cells.parquet")
    (tmp_path / "not.parquet").write_bytes(b"PAR1 not really")
    stats, traces, quarantine = ingest_files(sorted(tmp_path.glob("*.parquet")))
    assert {t["trace_id"] for t in traces} == {"t-11", "t-20"}
    got = sorted((q["file"].rsplit("/", 1)[1], q["line"], q["reason"]) for q in quarantine)
    assert got == [
        ("cells.parquet", 2, "out_of_range"),  # year 146,138,512: beyond a datetime
        ("cells.parquet", 3, "invalid_utf8"),
        ("not.parquet", 0, "unreadable_file"),
        ("strings.parquet", 1, "wrong_type"),
        ("strings.parquet", 2, "wrong_type"),
        ("strings.parquet", 3, "wrong_type"),
        ("wide.parquet", 1, "out_of_range"),
    ]


def test_one_huge_line_is_skipped_in_bounded_memory(tmp_path):
    line = b'{"pad": "' + b"x" * (1 << 20)
    for name, mb in [("huge.jsonl.gz", 96), ("huge.jsonl", 24)]:
        path = tmp_path / name
        with gzip.open(path, "wb", compresslevel=1) if name.endswith(".gz") else open(path, "wb") as f:
            f.write(orjson.dumps(good(0)) + b"\n")
            for _ in range(mb):
                f.write(line)
            f.write(b'"}\n' + orjson.dumps(good(1)) + b"\n")
        tracemalloc.start()
        try:
            stats, traces, quarantine = ingest_files([path], limit=1_000_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 12 * 2**20, f"{name}: peak {peak / 2**20:.0f} MiB while skipping a {mb} MiB line"
        assert ids(traces) == {"r-0", "r-1"}
        assert [(q["line"], q["reason"]) for q in quarantine] == [(2, "oversized_record")]
        assert quarantine[0]["detail"].startswith(f"{mb * len(line) + 2} bytes")


def test_other_files_in_a_folder_are_counted_not_read(tmp_path):
    (tmp_path / "date=2026-02-03").mkdir()
    (tmp_path / "date=2026-02-03" / "gateway.jsonl").write_bytes(jsonl([good(0)]))
    (tmp_path / "date=2026-13-40").mkdir()  # not a date: read, not an error
    (tmp_path / "date=2026-13-40" / "gateway.jsonl").write_bytes(jsonl([good(1)]))
    (tmp_path / "README.md").write_text("# gateway logs\n")
    (tmp_path / "date=2026-02-03" / "gateway.jsonl.tmp").write_bytes(b"{")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    os.mkfifo(tmp_path / "pipe.jsonl")  # never opened: reading it would block
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "dangling.jsonl")
    os.symlink(tmp_path / "date=2026-02-03", tmp_path / "linked")  # a linked folder is not searched, but listed
    files = ingest.find_log_files([str(tmp_path)], ingest.Window(START, END))
    stats, traces, quarantine = ingest_files(files)
    assert [f.rsplit("/", 2)[1] for f in files] == ["date=2026-02-03", "date=2026-13-40"]  # input_manifest hashes
    assert ids(traces) == {"r-0", "r-1"} and stats.files == 2 and not quarantine
    skipped = sorted(p.rsplit("/", 1)[1] for p in stats.files_skipped)
    assert skipped == [".DS_Store", "README.md", "dangling.jsonl", "gateway.jsonl.tmp", "linked", "pipe.jsonl"]
    meta = stats.as_metadata()
    assert meta["files_skipped"] == 6 and sorted(meta["files_skipped/names"]) == sorted(stats.files_skipped)
    # Named directly (not through find_log_files), the same paths are skipped, or quarantined if they vanished.
    stats, _, quarantine = ingest_files([tmp_path / "README.md", tmp_path / "pipe.jsonl", tmp_path / "gone.jsonl"])
    assert len(stats.files_skipped) == 2 and [(q["line"], q["reason"]) for q in quarantine] == [(0, "unreadable_file")]


def test_a_file_name_that_is_not_utf8(tmp_path):
    name = os.fsdecode(b"caf\xe9.jsonl")
    rec = good(0)
    del rec["request_id"]  # the trace's request_id is then file:line
    (tmp_path / name).write_bytes(jsonl([rec, b"{broken"]))
    _, traces, quarantine = ingest_files(ingest.find_log_files([str(tmp_path)]))  # converts both tables
    assert traces[0]["request_id"] == "caf\ufffd.jsonl:1" and quarantine[0]["file"].endswith("caf\ufffd.jsonl")


class FragileTask(PlaygroundTask):
    def parse(self, completion: str):  # noqa: ANN201
        if "boom" in completion:
            raise KeyError(completion)  # a message that quotes the content
        return super().parse(completion)


def test_a_bug_meeting_one_line_is_counted_not_fatal(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(jsonl([good(0), good(1, reasoning="boom secret"), good(2)]))
    _, traces, quarantine = ingest_files([path], task=FragileTask())
    assert ids(traces) == {"r-0", "r-2"}
    assert [(q["line"], q["reason"]) for q in quarantine] == [(2, "unexpected_error")]
    assert quarantine[0]["detail"].startswith("KeyError at ") and "secret" not in quarantine[0]["detail"]


def test_details_say_what_is_wrong_without_the_content(tmp_path):
    path = tmp_path / "x.jsonl"
    secret = "jane.doe@example.com"
    path.write_bytes(jsonl([good(0, timestamp=IN_WINDOW) | {"timestamp": f"{secret} yesterday"}]))
    _, _, quarantine = ingest_files([path])
    assert quarantine[0]["reason"] == "bad_timestamp" and secret not in quarantine[0]["detail"]


def test_a_byte_order_mark_and_deep_nesting(tmp_path):
    path = tmp_path / "x.jsonl"
    deep = orjson.dumps(good(1) | {"extra": 0}).replace(b'"extra":0', b'"extra":' + b"[" * 300 + b"]" * 300)
    deeper = orjson.dumps(good(2) | {"extra": 0}).replace(b'"extra":0', b'"extra":' + b"[" * 2000 + b"]" * 2000)
    repeated = deep.replace(b'{"timestamp"', b'{"user_id":"u-7","timestamp"', 1)  # too deep for orjson.dumps
    path.write_bytes(codecs.BOM_UTF8 + jsonl([good(0), deep, deeper, repeated]))
    _, traces, quarantine = ingest_files([path], limit=1_000_000)
    assert ids(traces) == {"r-0", "r-1"}
    assert [(q["line"], q["reason"]) for q in quarantine] == [(3, "bad_json"), (4, "ambiguous_record")]


def test_many_bad_lines_come_out_in_bounded_batches(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"not json\n" * 100 + jsonl([good(0)]))
    _parquet(tmp_path / "x.parquet", [trace_row(i, tokens=-1) for i in range(100)] + [trace_row(100)])
    stats, traces, _ = ingest_files([path, tmp_path / "x.parquet"], batch_rows=16)  # asserts batches <= 16 rows
    assert stats.quarantined["bad_json"] == 100 and stats.quarantined["out_of_range"] == 100
    assert ids(traces) == {"r-0", None} and len(traces) == 2


def test_the_whole_corpus_as_the_asset_writes_it(nasty, tmp_path):
    """All nasty files in one folder, through the loop of assets/deploy.py: no exception, nothing lost."""
    root = nasty[0]
    (root / "README").write_text("stray\n")
    window = ingest.Window(START, END)
    ing = ingest.Ingestor(TASK, ingest.Settings("2026-01-01", window), batch_rows=64)
    with (
        pq.ParquetWriter(tmp_path / "traces.parquet", TRACE_SCHEMA) as traces_out,
        pq.ParquetWriter(tmp_path / "quarantine.parquet", ingest.QUARANTINE_SCHEMA) as quarantine_out,
    ):
        for trace_rows, quarantine_rows in ing.batches(ingest.find_log_files([str(root)], window)):
            traces_out.write_table(ingest.to_table(trace_rows))
            quarantine_out.write_table(ingest.quarantine_table(quarantine_rows))
    s = ing.stats
    assert s.lines_read == s.lines_ingested + s.lines_quarantined
    assert pq.read_metadata(tmp_path / "traces.parquet").num_rows == s.traces
    assert pq.read_metadata(tmp_path / "quarantine.parquet").num_rows == s.lines_quarantined  # one line each here
    assert s.files == len(nasty[1]) and [p.rsplit("/", 1)[1] for p in s.files_skipped] == ["README"]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(["<think>", "</think>", "<thin", "think>", " ", "\n", "\u2003", "\x1c", "\x85", "a", "7", "é"]),
        max_size=14,
    ).map("".join),
    st.sampled_from(["plain", "think"]),
)
def test_the_think_split_answers_as_its_regex(content, markup):
    """The completion's <think>...</think> split, done with str.find, gives what _THINK's match gave (Unicode
    whitespace included: str.isspace is the regex's \\s), with both reasoning markups."""
    from flywheel_dagster.curation.ingest import chat

    def by_regex(content: str) -> tuple[str, str | None]:
        reasoning = None
        if "<think>" in content and (m := chat._THINK.match(content)):
            reasoning, content = m.group(1), content[m.end() :]
        if reasoning is None:
            return content, None
        reasoning = reasoning.strip()
        body = f"<think>{reasoning}</think>{content}" if markup == "think" else f"{reasoning}\n{content.lstrip()}"
        return body, reasoning

    assert chat._completion(None, content, markup) == by_regex(content)
