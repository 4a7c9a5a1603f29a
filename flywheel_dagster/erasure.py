"""Erasure requests: remove one user's traces from every copy the flywheel wrote: the serving logs the gateway
captured, and every cycle's raw, quarantine, harvested and training tables.

Each affected partition is rewritten atomically (the lake's partition writer: the old files stay until the
new ones are complete). What goes:
- `reasoning_traces`, `harvested_traces`, `ingest_quarantine`: rows whose `user_id` is the user's.
- `training_dataset` data and pairs: rows built from one of those traces (by trace id).
- `training_dataset` prompts: rows whose prompt is one the user asked that quarter (the prompt row, its
  reference and possibly its teacher solution came from the user's traffic; a prompt other users asked
  too goes as well, which is counted).

- the serving logs (`flywheel serve`'s JSON Lines, plain or gzipped): every line that names the user, as the
  record's user or anywhere as a JSON string (a line too broken to parse included), so it is not ingested
  again when a quarter is rerun. Other log files the flywheel only reads (`ingest.paths`) are not rewritten:
  the ones holding the user are listed as "erase at source", with their line counts.
- `ingest_quarantine`: also rows whose user id could not be parsed but whose excerpt or detail names the user.

The request goes into the audit chain (the user as a keyed hash; each file's hash before and after; rows removed)
and names the model versions trained on data that held the user's traces, and the versions descended from
them, so an operator can decide on retraining. A journal written before the first rewrite makes a crashed
request finish on the next run with the right "before" hashes.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel_dagster import audit
from flywheel_dagster.hashing import file_sha256
from flywheel_dagster.records import (
    CYCLE_AUDIT,
    HARVESTED_TRACES,
    INGEST_QUARANTINE,
    REASONING_TRACES,
    TRAINING_DATASET,
    Candidate,
    TrainingSet,
)
from flywheel_dagster.registry import Registry
from flywheel_dagster.traces.lake import DATA_FILE, Lake, OpenFile

JOURNAL_TABLE = "audit_erasure_journal"
ERASURE_LOCK = ".erasure.lock"  # held by a request from start to end (a file in the lake's root)
STARTED_TABLE = "audit_erasure_started"  # an empty object, made anew as each request run starts (hold_during_erasure)
USER_TABLES = (REASONING_TRACES, INGEST_QUARANTINE, HARVESTED_TRACES)
# What an erasure rewrites, and the cycle's audit record, which names those files' hashes: see hold_during_erasure
HELD_TABLES = frozenset({*USER_TABLES, TRAINING_DATASET, CYCLE_AUDIT})


class ErasureConflict(RuntimeError):
    """A partition of a user table not written because an erasure request ran while its inputs were read."""


def _erasure_state(lake: Lake) -> tuple[list[str], list[str]]:
    """The requests under way (their journals) and every request run's start marker: one view when the caller
    holds the lake's lock, which a request holds while it writes both."""
    return lake.files(JOURNAL_TABLE), lake.files(STARTED_TABLE)


def _running(lake: Lake, journals: list[str]) -> str:
    """The requests under way, as an operator finds them: when, by whom, the note (the user is a keyed hash)."""
    said = []
    for name in journals:
        try:
            j = json.loads(lake.read_object(JOURNAL_TABLE, name))
            said.append(
                f"requested at {j['requested_at']} by {j.get('requested_by', '?')!r}, note {j.get('note', '')!r}"
            )
        except (OSError, ValueError, KeyError):  # gone meanwhile (finished), or not a journal
            said.append(name)
    return "; ".join(said)


def refuse_erased(lake: Lake, manifest: dict, error: Callable[[str], BaseException] = ErasureConflict) -> None:
    """Refuse an ingest whose input files (audit.input_manifest) include one with the content a log had before
    an erasure request rewrote it: a backup restored, or a copy, that holds the erased user's lines again."""
    erased = {f["sha256_before"]: (entry, f) for entry in _erasures(lake) for f in entry.get("inputs_rewritten", [])}
    for f in manifest["files"]:
        if f["sha256"] in erased:
            entry, rewritten = erased[f["sha256"]]
            raise error(
                f"{f['path']}: holds what {rewritten['path']} held before erasure request #{entry['seq']} "
                f"(requested at {entry['requested_at']}) removed a user's lines from it: a backup restored, or a "
                "copy. Not ingested: put the rewritten file back, or erase the user there (under the serving logs, "
                "running that `flywheel forget` again does; elsewhere, at the source), then materialize this "
                "partition again."
            )


def rewrites_of(lake: Lake, table: str, cycle: str, name: str, sha256: str) -> list[int]:
    """The erasure requests (their entries' seq) that rewrote this file of a partition from the content with
    `sha256`: a step that read that content (a training job reading the training set) used rows a request then
    removed."""
    seqs, current = [], sha256
    for entry in _erasures(lake):
        for f in entry["rewritten"]:
            if (f["table"], f["cycle"], f["file"], f["sha256_before"]) == (table, cycle, name, current):
                seqs.append(entry["seq"])
                current = f["sha256_after"]
    return seqs


def _erasures(lake: Lake) -> list[dict]:
    """The audit chain's erasure entries, oldest first."""
    return [e for e in audit.Chain(lake).entries() if e.get("kind") == "erasure"]


def hold_during_erasure(lake: Lake, error: Callable[[str], BaseException] = ErasureConflict) -> Lake:
    """Make `lake` refuse to write a partition of a table an erasure rewrites (raw, quarantined, harvested
    traces, training set) from inputs read while an erasure request was running or before one started: such a
    partition could hold the erased user's rows again, written after the request removed them. Call it before
    the inputs are read (every asset does, in open_cycle); the write is refused with `error(message)` when the
    partition is opened (fail fast) or committed. The commit's check and rename hold the lake's lock, which a
    request takes as it starts, so a partition is committed either before the request scans it or not at all."""
    with lake.locked():
        journals, started = _erasure_state(lake)

    def guard(table: str) -> None:  # at commit under the lock (PartitionWriter), so one view there
        if table not in HELD_TABLES:
            return
        journals_now, started_now = _erasure_state(lake)
        if journals or journals_now:
            raise error(
                f"{table}: an erasure request (flywheel forget) is running, or stopped before it finished "
                f"({_running(lake, journals_now or journals)}; its journal is under {JOURNAL_TABLE}/). The user "
                "tables are not written until it is done: run the same `flywheel forget` again if it stopped, then "
                "materialize this partition again."
            )
        if started_now != started:
            raise error(
                f"{table}: an erasure request (flywheel forget) ran while this step read its inputs, so its output "
                "could hold the erased user's rows again, or name files the request rewrote; it was not written. "
                "Materialize this partition again."
            )

    lake.write_guard = guard
    return lake


@dataclass
class ErasureResult:
    subject_sha256: str
    removed: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (table, cycle, file) -> rows
    trained_on: list[str] = field(default_factory=list)  # model versions trained on the user's data
    descendants: list[str] = field(default_factory=list)  # versions trained from those
    entry_sha256: str = ""
    seq: int = 0
    logs_rewritten: dict[str, int] = field(default_factory=dict)  # serving log file -> lines removed
    # files the request could not rewrite -> lines naming the user (-1: a damaged file, not readable line by line)
    erase_at_source: dict[str, int] = field(default_factory=dict)

    @property
    def rows_removed(self) -> int:
        return sum(self.removed.values())


# A file's rows to keep, batch by batch: True for a row that stays.
Keep = Callable[[pa.RecordBatch], pa.Array]
SCAN_ROWS = 8192  # rows a batch when a file is scanned or rewritten: memory stays flat whatever its size


def _mask(batch: pa.RecordBatch, column: str, values: pa.Array) -> pa.Array:
    """True for rows to keep: those whose `column` is not one of `values`."""
    if column not in batch.schema.names or not len(values):
        return pa.array([True] * batch.num_rows)
    return pc.invert(pc.fill_null(pc.is_in(batch.column(column), value_set=values), False))


def _value_set(values: set[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _user_rows(table: str, user_id: str) -> Keep:
    """The rows that are not the user's: by user id, and in the quarantine also by the excerpt or detail naming
    the user (a line whose user id could not be parsed)."""
    needles = [n.decode() for n in _needles(user_id)]
    user = _value_set({user_id})

    def keep(batch: pa.RecordBatch) -> pa.Array:
        kept = _mask(batch, "user_id", user)
        if table == INGEST_QUARANTINE:
            for col in ("excerpt", "detail"):
                for needle in needles:
                    named = pc.fill_null(pc.match_substring(batch.column(col), needle), False)
                    kept = pc.and_(kept, pc.invert(named))
        return kept

    return keep


def _not_in(columns: tuple[str, ...], values: set[str]) -> Keep:
    value_set = _value_set(values)

    def keep(batch: pa.RecordBatch) -> pa.Array:
        kept = pa.array([True] * batch.num_rows)
        for col in columns:
            kept = pc.and_(kept, _mask(batch, col, value_set))
        return kept

    return keep


def _scan(lake: Lake, table: str, cycle: str, name: str, keep: Keep) -> pa.Table | None:
    """The rows of one file that `keep` removes, in the columns that decide and name them, read a batch at a time
    (a quarter's partition need not fit in memory); None when it removes none."""
    names = lake.schema(table, cycle, name).names
    columns = [c for c in ("user_id", "excerpt", "detail", "trace_id", "chosen_trace_id",
                           "rejected_trace_id", "prompt") if c in names]  # fmt: skip
    gone = [
        batch.filter(pc.invert(keep(batch)))
        for batch in lake.iter_batches(table, cycle, name, columns=columns, batch_rows=SCAN_ROWS)
    ]
    gone = [g for g in gone if g.num_rows]
    return pa.Table.from_batches(gone) if gone else None


def _plan_cycle(lake: Lake, cycle: str, user_id: str) -> dict[tuple[str, str], Keep]:
    """(table, file) -> the rows to keep, for each file of the cycle that loses rows. Each file is scanned a batch
    at a time for the columns that decide: what is held is the user's rows' trace ids and prompts."""
    out: dict[tuple[str, str], Keep] = {}
    trace_ids: set[str] = set()
    prompts: set[str] = set()
    for table in USER_TABLES:
        if not lake.exists(table, cycle):
            continue
        if "user_id" not in lake.schema(table, cycle).names:
            continue
        keep = _user_rows(table, user_id)
        gone = _scan(lake, table, cycle, DATA_FILE, keep)
        if gone is not None:
            out[(table, DATA_FILE)] = keep
            if "trace_id" in gone.column_names:
                trace_ids |= set(gone.column("trace_id").to_pylist())
            if table == HARVESTED_TRACES:  # the prompts as the training set saw them (redacted)
                prompts |= set(gone.column("prompt").to_pylist())
    trace_ids.discard(None)
    prompts.discard(None)
    if not trace_ids:
        return out
    for name, columns, values in (
        (TrainingSet.EXAMPLES, ("trace_id",), trace_ids),
        (TrainingSet.PAIRS, ("chosen_trace_id", "rejected_trace_id"), trace_ids),
        (TrainingSet.PROMPTS, ("prompt",), prompts),
    ):
        if not lake.exists(TRAINING_DATASET, cycle, name):  # not built yet, or from before the file existed
            continue
        keep = _not_in(columns, values)
        if _scan(lake, TRAINING_DATASET, cycle, name, keep) is not None:
            out[(TRAINING_DATASET, name)] = keep
    return out


def _rows(lake: Lake, table: str, cycle: str, name: str) -> int:
    with lake.fs.open_input_file(f"{lake.partition_dir(table, cycle)}/{name}") as f:
        return pq.ParquetFile(f).metadata.num_rows


def _rewrite(lake: Lake, table: str, cycle: str, replaced: dict[str, Keep]) -> None:
    """Rewrite one partition atomically, a batch at a time: `replaced` files keep the rows their predicate keeps,
    the others are copied as they are."""
    with lake.open_partition(table, cycle) as part:
        for name in lake.files(table, cycle):
            if name in replaced:
                schema = lake.schema(table, cycle, name)
                out = part.parquet(name, schema)
                for batch in lake.iter_batches(table, cycle, name, batch_rows=SCAN_ROWS):
                    out.write_table(pa.Table.from_batches([batch.filter(replaced[name](batch))], schema))
            else:
                part.write_bytes(name, lake.read_bytes(table, cycle, name))


def _needles(user_id: str) -> list[bytes]:
    """The user id as it can appear in a JSON line: as a string token, raw UTF-8 or \\u-escaped."""
    return sorted({json.dumps(user_id, ensure_ascii=False).encode(), json.dumps(user_id).encode()})


def _names_user(line: bytes, needles: list[bytes]) -> bool:
    return any(n in line for n in needles)


def _log_files(folders: Iterable[str]) -> list[Path]:
    out = []
    for folder in folders:
        root = Path(folder)
        if root.is_dir():
            out += [p for p in root.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz"))]
    return sorted(set(out))


def _read_lines(path: Path) -> Iterator[bytes]:
    """A log's lines as they are read: a log may be larger than memory."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def rewrite_log(path: Path, needles: list[bytes]) -> int:
    """Drop every line naming the user from one serving log, atomically (a temp file renamed over it, under an
    exclusive lock that the gateway's writer also takes, so no line it appends in between is lost), a line at a
    time. Returns the lines removed."""
    import fcntl

    with open(path, "rb+") as locked:
        fcntl.flock(locked, fcntl.LOCK_EX)
        tmp = path.with_name(f".{path.name}.erasure-tmp")  # not a log file's name: no ingest reads it
        removed = 0
        try:
            with open(tmp, "wb") as raw:
                gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.name.endswith(".gz") else None
                out = gz or raw
                for line in _read_lines(path):
                    if _names_user(line, needles):
                        removed += 1
                    else:
                        out.write(line)
                if gz is not None:
                    gz.close()  # writes the gzip trailer; raw stays open
                raw.flush()
                os.fsync(raw.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if not removed:
            tmp.unlink()
            return 0
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
        return removed


def _count_at_source(paths: Iterable[str], user_id: str) -> dict[str, int]:
    """Read-only inputs (ingest.paths) that hold lines or rows of the user: file -> how many."""
    from flywheel_dagster.curation.ingest import find_log_files

    needles, out = _needles(user_id), {}
    try:
        files = find_log_files(list(paths))
    except FileNotFoundError:
        files = [p for p in paths if Path(p).is_file()]
    for f in files:
        try:
            if f.endswith(".parquet"):
                n = sum(
                    pc.sum(pc.equal(batch.column(0), user_id)).as_py() or 0
                    for batch in OpenFile(pq.ParquetFile(f)).batches(["user_id"])  # a row group at a time
                )
            else:
                n = sum(_names_user(x, needles) for x in _read_lines(Path(f)))
        except Exception:  # noqa: BLE001 - an unreadable input is listed by the ingest, not here
            continue
        if n:
            out[str(Path(f).resolve())] = n
    return out


def _affected_models(lake: Lake, cycles: set[str]) -> tuple[list[str], list[str]]:
    """Candidates trained on those cycles' training sets, and every later candidate trained from one of them."""
    candidates = {q: Candidate.read(lake, q) for q in Candidate.cycles(lake)}
    direct = [c.version for q, c in sorted(candidates.items()) if q in cycles]
    tainted, descendants = set(direct), []
    for _, c in sorted(candidates.items()):
        if c.parent_version in tainted and c.version not in tainted:
            tainted.add(c.version)
            descendants.append(c.version)
    return direct, descendants


def _sweep(lake: Lake, progress: Callable[[str], None], why: str, restore: bool = True) -> None:
    """Lake.clear_leftovers of every table a request rewrites, each folder told to `progress` (under the lock)."""
    for table in sorted(HELD_TABLES):
        for folder, done in lake.clear_leftovers(table, restore=restore):
            progress(f"{table}/{folder}, {why}: {done}")


def forget(
    lake: Lake,
    registry: Registry,
    user_id: str,
    requested_by: str,
    note: str = "",
    now: datetime | None = None,
    *,
    key: bytes,
    log_dirs: Iterable[str] = (),
    read_only_paths: Iterable[str] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> ErasureResult:
    """Remove `user_id`'s traces everywhere the flywheel wrote them (the serving logs under `log_dirs`, every
    cycle's tables in the lake), list the read-only inputs that still hold them, and record the request in the
    audit chain. `key`: the deployment's erasure key (audit.erasure_key). `progress` is told each step as it
    starts (on a quarter's lake, a request reads every partition: minutes)."""
    if not user_id.strip():
        raise ValueError("--user-id must not be empty")
    if not requested_by.strip():
        raise ValueError("--by: name who handled the request")
    lake = Lake(lake.location)  # this request's own view: rewriting is what a held lake (write_guard) refuses
    # One request at a time: each reads a partition and commits it rewritten, so two at once could each put back
    # the rows the other removed.
    with lake.locked(ERASURE_LOCK, waiting=lambda: progress("waiting for another erasure request to finish")):
        return _forget(
            lake, registry, user_id, requested_by, note, now, key=key, log_dirs=log_dirs,
            read_only_paths=read_only_paths, progress=progress,
        )  # fmt: skip


def _forget(
    lake: Lake,
    registry: Registry,
    user_id: str,
    requested_by: str,
    note: str,
    now: datetime | None,
    *,
    key: bytes,
    log_dirs: Iterable[str],
    read_only_paths: Iterable[str],
    progress: Callable[[str], None],
) -> ErasureResult:
    subject = audit.subject_sha256(user_id, key)
    needles = _needles(user_id)
    audit.ensure_genesis(lake, registry)
    journal_name = f"{subject}.json"
    journal = (
        json.loads(lake.read_object(JOURNAL_TABLE, journal_name)) if journal_name in lake.files(JOURNAL_TABLE) else None
    )
    before: dict[str, dict] = dict(journal["before"]) if journal else {}
    logs_before: dict[str, dict] = dict(journal.get("logs", {})) if journal else {}
    at = journal["requested_at"] if journal else (now or datetime.now(UTC)).replace(microsecond=0).isoformat()

    def save_journal() -> None:  # replaced whole: never a moment without it (a crash, or a step's check)
        state = {"requested_at": at, "requested_by": requested_by, "note": note, "before": before, "logs": logs_before}
        lake.replace_object(JOURNAL_TABLE, journal_name, json.dumps(state).encode())

    # Under the lake's lock, so that a partition of a user table is either committed before this (and scanned
    # below) or refused (hold_during_erasure): no step that read its inputs before now writes after.
    # A step compares the markers it saw with those there now, so the newest alone says a request started: the
    # older ones go (a step that saw them is refused by the new one anyway), and the folder holds one file.
    # The journal first: on an object store, where there is no lock, a step that sees the new marker sees the
    # journal too. Then the folders a crashed or refused write left (.tmp-cycle=...: a step killed as it wrote;
    # .old-cycle=...: a commit stopped before it removed the old partition, put back if it is the only copy and
    # then rewritten below): no listing shows them, and they can hold the user's rows. A step still writing into
    # one is refused at its commit anyway.
    with lake.locked():
        stale = lake.files(STARTED_TABLE)
        save_journal()
        lake.write_object(STARTED_TABLE, f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}", b"")
        for name in stale:
            lake.delete_object(STARTED_TABLE, name)
        _sweep(lake, progress, "left by a write that did not finish")
    # The serving logs first: a rerun of any quarter would ingest the user's lines again from them. Each file's
    # hash before is journaled before it is rewritten, so a crashed request records the right one on its rerun.
    unreadable: list[str] = []
    logs = _log_files(log_dirs)
    progress(f"reading {len(logs)} serving log file(s)")
    for path in logs:
        name = str(path.resolve())
        try:
            if name not in logs_before and not any(_names_user(x, needles) for x in _read_lines(path)):
                continue
        except (OSError, EOFError, zlib.error):  # a damaged log cannot be rewritten line by line: say so
            unreadable.append(name)
            continue
        if name not in logs_before:
            logs_before[name] = {"sha256": file_sha256(path)[0], "lines_removed": 0}
            save_journal()
        progress(f"rewriting {name}")
        logs_before[name]["lines_removed"] += rewrite_log(path, needles)
        save_journal()
    inputs_rewritten = []
    logs_rewritten: dict[str, int] = {}
    for name, b in sorted(logs_before.items()):
        after = file_sha256(name)[0]
        if after == b["sha256"]:
            continue
        logs_rewritten[name] = b["lines_removed"]
        inputs_rewritten.append(
            {"path": name, "lines_removed": b["lines_removed"], "sha256_before": b["sha256"], "sha256_after": after}
        )
    written_dirs = {str(Path(d).resolve()) for d in log_dirs}
    progress("counting the user's lines in the read-only inputs (ingest.paths)")
    at_source = {f: -1 for f in unreadable} | {
        f: n
        for f, n in _count_at_source(read_only_paths, user_id).items()
        if not any(f.startswith(d + os.sep) for d in written_dirs)
    }
    for q in sorted(set().union(*(lake.cycles(t) for t in (*USER_TABLES, TRAINING_DATASET)))):
        progress(f"cycle {q}: scanning")
        plan = _plan_cycle(lake, q, user_id)
        for table, name in plan:
            k = f"{table}|{q}|{name}"
            if k not in before:
                before[k] = {"sha256": lake.sha256(table, q, name), "rows": _rows(lake, table, q, name)}
        save_journal()
        # Derived tables first: if this crashes, the raw rows still name the traces to remove on the rerun.
        for table in (TRAINING_DATASET, HARVESTED_TRACES, INGEST_QUARANTINE, REASONING_TRACES):
            replaced = {name: data for (t, name), data in plan.items() if t == table}
            if replaced:
                progress(f"cycle {q}: rewriting {table} ({', '.join(sorted(replaced))})")
                _rewrite(lake, table, q, replaced)
    # The old partitions the rewrites replaced hold the user: one a commit could not remove (it leaves it rather
    # than fail a committed write) goes now, or the request stops here, its journal kept, to be run again.
    with lake.locked():
        _sweep(lake, progress, "left by a rewrite", restore=False)

    result = ErasureResult(subject, logs_rewritten=logs_rewritten, erase_at_source=at_source)
    rewritten = []
    for k, b in sorted(before.items()):
        table, q, name = k.split("|")
        rows_after = _rows(lake, table, q, name)
        result.removed[(table, q, name)] = b["rows"] - rows_after
        rewritten.append(
            {
                "table": table,
                "cycle": q,
                "file": name,
                "rows_before": b["rows"],
                "rows_after": rows_after,
                "sha256_before": b["sha256"],
                "sha256_after": lake.sha256(table, q, name),
            }
        )
    training_cycles = {f["cycle"] for f in rewritten if f["table"] == TRAINING_DATASET}
    result.trained_on, result.descendants = _affected_models(lake, training_cycles)
    entry = {
        "kind": "erasure",
        "subject_sha256": subject,
        "requested_by": requested_by.strip(),
        "requested_at": at,
        "note": note,
        "rewritten": rewritten,
        "rows_removed": sum(f["rows_before"] - f["rows_after"] for f in rewritten),
        "inputs_rewritten": inputs_rewritten,
        # inputs the flywheel only reads: the operator erases the user there (file -> lines naming the user)
        "erase_at_source": at_source,
        "model_versions_trained_on_data": result.trained_on,
        "model_versions_descended": result.descendants,
    }
    stored, sha = audit.append_and_anchor(audit.Chain(lake), registry, entry)
    lake.delete_object(JOURNAL_TABLE, journal_name)
    result.entry_sha256, result.seq = sha, stored["seq"]
    return result
