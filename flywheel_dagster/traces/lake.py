"""The trace lake: Parquet tables under <root>/<table>/cycle=<key>/, written atomically per cycle.

A write goes to a temporary folder beside the target and is renamed into place, so readers see the old
partition or the new one, never half of one, and a rerun of a cycle replaces its rows instead of adding
to them. Any pyarrow filesystem works (local paths, s3://, gs://); the rename is atomic on local disks.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

DATA_FILE = "part-00000.parquet"
ROW_GROUP_ROWS = 8192  # at most, a row group: the unit a reader streams and a Ray worker is sent (row_groups)
# Columns whose values seldom repeat within a row group get no dictionary: building one for every page and
# falling back costs more than it saves (harvested traces: 1.35 -> 1.11 us a trace to write, 13.3 -> 12.2 MB).
DISTINCT_TEXT = frozenset({"trace_id", "request_id", "created_at", "prompt", "completion", "reasoning"})


def parquet_options(schema: pa.Schema) -> dict:
    """How the lake writes Parquet: zstd, dictionaries for the columns whose values repeat."""
    return {"compression": "zstd", "use_dictionary": [f.name for f in schema if f.name not in DISTINCT_TEXT]}


@dataclass(frozen=True)
class LakeFile:
    uri: str
    sha256: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class RowGroup:
    """One row group of a Parquet file, by name: what another process (a Ray worker) reads itself rather than
    being sent the rows. `location` is the lake's root (a URI, or an absolute local path)."""

    location: str
    path: str  # under location
    index: int
    rows: int
    version: tuple[int, int] | None  # the file's size and modification time (ns) when listed; None: unknown

    def read(self) -> pa.Table:
        fs, root = _filesystem(self.location)
        footer = _footer(self.location, self.path, self.version) if self.version is not None else None
        with fs.open_input_file(f"{root}/{self.path}") as f:
            return pq.ParquetFile(f, metadata=footer).read_row_group(self.index)


@functools.lru_cache(maxsize=2)
def _footer(location: str, path: str, version: tuple[int, int]) -> pq.FileMetaData:
    """A file's Parquet footer, parsed once a process (a Ray worker reads group after group of one file). It
    holds every row group's metadata, about 2.8 KB a group of harvested traces: 3.4 MB at 10 million traces,
    27-29 ms to parse, several times the read of a group (4 ms), and growing with the file. `version` keeps a
    rewritten partition's new file from being read with the old one's footer (a store that gives no
    modification time gets no cache). A Ray worker's cache lasts one harvest step."""
    fs, root = _filesystem(location)
    with fs.open_input_file(f"{root}/{path}") as f:
        return pq.ParquetFile(f).metadata


def _rebatched(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of `rows` (the last may be shorter), whatever the sizes coming in; a batch of
    that size already passes as it is."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if not held and batch.num_rows == rows:
            yield batch
            continue
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            rest = table.slice(rows, count - rows)  # a length: a table of no columns ignores the offset alone
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]


# A partition write's folders beside the partitions, hidden from listings: its new files until they are
# committed, and the old partition until the commit removes it (Lake.leftovers: where one did not finish).
_TMP, _OLD = ".tmp-cycle=", ".old-cycle="


def _leftover_cycle(folder: str) -> str:
    return folder.split("=", 1)[1].rsplit("-", 1)[0]  # <prefix><cycle>-<hex8>


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    fs, root = pafs.FileSystem.from_uri(location) if "://" in location else (pafs.LocalFileSystem(), location)
    return fs, root.rstrip("/")


class Lake:
    """Read and write one cycle's partition of a table."""

    def __init__(self, root: str) -> None:
        self.location = root  # as given (a folder or a URI): what another process opens the same lake with
        self.fs, self.root = _filesystem(root)
        self.fs.create_dir(self.root, recursive=True)
        self._scheme = root.split("://", 1)[0] + "://" if "://" in root else "file://"
        # Asked with a table's name as a partition of it is opened, and again under the lake's lock just before it
        # is committed; raises to refuse the write (erasure.hold_during_erasure: no write from inputs read before
        # an erasure request lands after it).
        self.write_guard: Callable[[str], None] | None = None

    @contextmanager
    def locked(self, name: str = ".lock", waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """An exclusive lock on `<root>/<name>` (flock: every process on the machine, or on a shared file system
        that supports it), `waiting` called first when another holder makes this one wait. ".lock" orders the
        commits of partitions against an erasure request's start. An object store has no such lock: there it is
        a no-op, and what it orders is left to the instant between a check and a rename."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            yield
            return
        import fcntl

        with open(os.path.join(self.root, name), "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def partition_dir(self, table: str, cycle: str) -> str:
        return f"{self.root}/{table}/cycle={cycle}"

    def uri(self, table: str, cycle: str, name: str = DATA_FILE) -> str:
        return f"{self._scheme}{self.partition_dir(table, cycle)}/{name}"

    def exists(self, table: str, cycle: str, name: str = DATA_FILE) -> bool:
        info = self.fs.get_file_info(f"{self.partition_dir(table, cycle)}/{name}")
        return info.type == pafs.FileType.File

    def write_partition(self, table: str, cycle: str, files: dict[str, bytes | pa.Table]) -> dict[str, LakeFile]:
        """Replace the whole partition with these files (Parquet tables or raw bytes), atomically."""
        with self.open_partition(table, cycle) as part:
            for name, content in files.items():
                if isinstance(content, pa.Table):
                    part.parquet(name, content.schema).write_table(content)
                else:
                    part.write_bytes(name, content)
        return part.files

    def open_partition(self, table: str, cycle: str) -> PartitionWriter:
        """A streaming writer for a whole partition: files appear together when it closes without error.

            with lake.open_partition("harvested_traces", key) as part:
                w = part.parquet("part-00000.parquet", schema)
                for batch in batches:
                    w.write_table(batch)
                part.write_bytes("monitors.json", payload)
            part.files  # name -> LakeFile

        If the block raises, the temporary folder is removed and the old partition stays as it was.
        """
        return PartitionWriter(self, table, cycle)

    @contextmanager
    def open_partitions(self, *partitions: tuple[str, str]) -> Iterator[tuple[PartitionWriter, ...]]:
        """Writers for several partitions ((table, cycle) each) that are committed together when the block ends
        without error, all or none (the ingest's traces and its quarantine): see open_partition."""
        parts = tuple(PartitionWriter(self, table, cycle) for table, cycle in partitions)
        entered: list[PartitionWriter] = []
        try:
            for part in parts:
                entered.append(part.__enter__())
            yield parts
        except BaseException:
            _abandon_all(entered)
            raise
        _commit(self, list(parts))

    def write_table(self, table: str, cycle: str, data: pa.Table) -> LakeFile:
        return self.write_partition(table, cycle, {DATA_FILE: data})[DATA_FILE]

    def iter_batches(
        self, table: str, cycle: str, name: str = DATA_FILE, columns: list[str] | None = None, batch_rows: int = 8192
    ) -> Iterator[pa.RecordBatch]:
        """Stream a partition's rows without loading the whole file (OpenFile.batches)."""
        with self.open_file(table, cycle, name) as data:
            yield from data.batches(columns, batch_rows)

    @contextmanager
    def open_file(self, table: str, cycle: str, name: str = DATA_FILE) -> Iterator[OpenFile]:
        """One partition file held open, to be read more than once: every read sees the same rows, even if the
        partition is rewritten meanwhile (on a local disk, where the open file keeps the old one; an object
        store reads by name)."""
        path = self._existing(table, cycle, name)
        with self.fs.open_input_file(path) as f:
            yield OpenFile(pq.ParquetFile(f))

    def _existing(self, table: str, cycle: str, name: str) -> str:
        """The path of a partition's file; FileNotFoundError, naming the table and cycle, when there is none."""
        path = f"{self.partition_dir(table, cycle)}/{name}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(f"lake table {table!r} has no partition for cycle {cycle!r} ({path})")
        return path

    def row_groups(self, table: str, cycle: str, name: str = DATA_FILE) -> list[RowGroup]:
        """A partition's file as its row groups, in order (the lake writes at most ROW_GROUP_ROWS rows a group)."""
        path = self._existing(table, cycle, name)
        info = self.fs.get_file_info(path)
        with self.fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        local = isinstance(self.fs, pafs.LocalFileSystem)
        location = os.path.abspath(self.root) if local else self.location.rstrip("/")
        inside = f"{table}/cycle={cycle}/{name}"
        version = (info.size, info.mtime_ns) if info.size is not None and info.mtime_ns is not None else None
        return [RowGroup(location, inside, i, meta.row_group(i).num_rows, version) for i in range(meta.num_row_groups)]

    def schema(self, table: str, cycle: str, name: str = DATA_FILE) -> pa.Schema:
        """A partition file's schema, from its footer."""
        with self.fs.open_input_file(self._existing(table, cycle, name)) as f:
            return pq.read_schema(f)

    def read_table(self, table: str, cycle: str, name: str = DATA_FILE) -> pa.Table:
        path = self._existing(table, cycle, name)
        return pq.read_table(path, filesystem=self.fs)

    def read_bytes(self, table: str, cycle: str, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.partition_dir(table, cycle)}/{name}") as f:
            return f.read()

    def sha256(self, table: str, cycle: str, name: str = DATA_FILE) -> str:
        """The content hash of one file of a partition."""
        return self._sha256(f"{self.partition_dir(table, cycle)}/{name}")[0]

    def file_sha256(self, table: str, cycle: str, name: str) -> tuple[str, int]:
        """(sha256, size in bytes) of one file of a partition."""
        return self._sha256(f"{self.partition_dir(table, cycle)}/{name}")

    def cycles(self, table: str) -> list[str]:
        """The partitions a table holds, sorted."""
        return sorted(
            i.base_name.split("=", 1)[1]
            for i in self._list(f"{self.root}/{table}")
            if i.type == pafs.FileType.Directory and i.base_name.startswith("cycle=")
        )

    def files(self, table: str, cycle: str | None = None) -> list[str]:
        """The file names in a cycle's partition, or directly under the table when `cycle` is None."""
        folder = f"{self.root}/{table}" if cycle is None else self.partition_dir(table, cycle)
        return sorted(
            i.base_name for i in self._list(folder) if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        )

    def _list(self, folder: str) -> list[pafs.FileInfo]:
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return []
        return self.fs.get_file_info(pafs.FileSelector(folder))

    def write_object(self, table: str, name: str, content: bytes) -> None:
        """Create one file directly under a table (an append-only log such as the audit chain): written to a
        temporary name and renamed, so it appears whole; an existing file is never replaced."""
        if self.fs.get_file_info(f"{self.root}/{table}/{name}").type != pafs.FileType.NotFound:
            raise FileExistsError(f"lake object {table}/{name} already exists; entries are never rewritten")
        self._put_object(table, name, content)

    def leftovers(self, table: str) -> list[str]:
        """The folders of a table that a partition write left when it did not finish (its temporary folder, or
        the old partition a commit had not yet removed): hidden from every listing, and never read."""
        return sorted(
            i.base_name
            for i in self._list(f"{self.root}/{table}")
            if i.type == pafs.FileType.Directory and i.base_name.startswith((_TMP, _OLD))
        )

    def clear_leftovers(self, table: str, restore: bool = True) -> list[tuple[str, str]]:
        """Deal with leftovers(table), under the lake's lock (no commit is under way): an old partition whose
        cycle has none (a commit killed between its two renames, or a rollback that failed) is put back, the
        newest if there are several (by its files' modification time; with restore=False, such a one raises),
        anything else removed. Returns (folder, what was done): "restored", "removed", "gone" (its writer
        removed it meanwhile) or "in use" (a temporary folder a write is still adding files to: its commit is
        refused, and removes it). Any other failure raises: the folder could hold users' rows."""
        import errno

        folders = self.leftovers(table)
        present = set(self.cycles(table))
        restored: dict[str, str] = {}  # cycle -> the old partition to put back
        for folder in folders:
            cycle = _leftover_cycle(folder)
            if folder.startswith(_OLD) and cycle not in present:
                if not restore:
                    raise RuntimeError(f"{table}/{folder}: the only copy of cycle {cycle}'s partition, not put back")
                if cycle not in restored or self._newest(table, folder) > self._newest(table, restored[cycle]):
                    restored[cycle] = folder
        done = []
        for folder in folders:
            path = f"{self.root}/{table}/{folder}"
            cycle = _leftover_cycle(folder)
            try:
                if restored.get(cycle) == folder:
                    self.fs.move(path, self.partition_dir(table, cycle))
                    done.append((folder, "restored"))
                else:
                    self.fs.delete_dir(path)
                    done.append((folder, "removed"))
            except FileNotFoundError:
                done.append((folder, "gone"))
            except OSError as e:
                if not (folder.startswith(_TMP) and e.errno == errno.ENOTEMPTY):
                    raise
                done.append((folder, "in use"))  # a file created in it as it was removed
        return done

    def _newest(self, table: str, folder: str) -> int:
        files = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{table}/{folder}", recursive=True))
        return max((i.mtime_ns or 0 for i in files), default=0)

    def replace_object(self, table: str, name: str, content: bytes) -> None:
        """Write one file directly under a table, replacing it if it is there: written to a temporary name and
        renamed over it (atomic on a local disk), so a reader sees the old content or the new, never none."""
        self._put_object(table, name, content)

    def _put_object(self, table: str, name: str, content: bytes) -> None:
        """One file directly under a table, written to a temporary name and renamed into place."""
        self.fs.create_dir(f"{self.root}/{table}", recursive=True)
        tmp = f"{self.root}/{table}/.tmp-{uuid.uuid4().hex[:8]}-{name}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(content)
        self.fs.move(tmp, f"{self.root}/{table}/{name}")

    def delete_object(self, table: str, name: str) -> None:
        """Remove one file directly under a table, if it is there."""
        path = f"{self.root}/{table}/{name}"
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def read_object(self, table: str, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{table}/{name}") as f:
            return f.read()

    def _sha256(self, path: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size


@dataclass(frozen=True)
class OpenFile:
    """See Lake.open_file."""

    file: pq.ParquetFile

    def batches(self, columns: list[str] | None = None, batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
        """Batches of batch_rows rows (the last may be shorter), read a row group at a time. Over a whole file,
        pyarrow's reader keeps every row group it pre-buffered until it is done (about 70 MB a million harvested
        traces, 213 MB at 3 million: the memory grew with the quarter); one group's reader frees them as the next
        starts (9 MB on the playground's harvested traces, 33 MB with 1 KB completions, at any size:
        benchmarks/lake_memory.py), and still reads each group in few requests from a remote store."""
        pf = self.file
        groups = (
            batch
            for group in range(pf.metadata.num_row_groups)
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
        )
        yield from _rebatched(groups, batch_rows)


class PartitionWriter:
    """See Lake.open_partition."""

    def __init__(self, lake: Lake, table: str, cycle: str) -> None:
        self.lake, self.table, self.cycle = lake, table, cycle
        self.tmp = f"{lake.root}/{table}/{_TMP}{cycle}-{uuid.uuid4().hex[:8]}"
        self.files: dict[str, LakeFile] = {}
        self._writers: dict[str, tuple[pq.ParquetWriter, object]] = {}
        self._rows: dict[str, int] = {}

    def __enter__(self) -> PartitionWriter:
        if self.lake.write_guard is not None:
            self.lake.write_guard(self.table)  # refused now rather than after the work
        self.lake.fs.create_dir(self.tmp, recursive=True)
        return self

    def parquet(self, name: str, schema: pa.Schema) -> _CountingWriter:
        stream = self.lake.fs.open_output_stream(f"{self.tmp}/{name}")
        writer = pq.ParquetWriter(stream, schema, **parquet_options(schema))
        self._writers[name] = (writer, stream)
        self._rows[name] = 0
        return _CountingWriter(writer, self._rows, name)

    def write_bytes(self, name: str, content: bytes) -> None:
        with self.lake.fs.open_output_stream(f"{self.tmp}/{name}") as out:
            out.write(content)
        self._rows[name] = 0

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._abandon()
        else:
            _commit(self.lake, [self])

    def _abandon(self) -> None:
        self._close()
        if self.lake.fs.get_file_info(self.tmp).type == pafs.FileType.Directory:
            self.lake.fs.delete_dir(self.tmp)

    def _close(self) -> None:
        for writer, stream in self._writers.values():
            writer.close()
            stream.close()
        self._writers = {}

    def _seal(self) -> None:
        """Close the files and record each one's hash, rows and size, as it will be named once committed."""
        self._close()
        final = self.lake.partition_dir(self.table, self.cycle)
        for name, rows in self._rows.items():
            digest, size = self.lake._sha256(f"{self.tmp}/{name}")
            self.files[name] = LakeFile(uri=f"{self.lake._scheme}{final}/{name}", sha256=digest, rows=rows, bytes=size)


def _commit(lake: Lake, parts: list[PartitionWriter]) -> None:
    """Rename each sealed partition into place: under the lake's lock, every one asked of lake.write_guard before
    any is renamed, so they are committed all or none (a refusal, or an error part-way, puts back the old ones,
    and the error raised is the first one). The old partitions are removed under the lock too, so nothing that
    holds it (an erasure request's sweep of Lake.leftovers) sees one a commit is about to remove."""
    fs = lake.fs
    moved: list[tuple[PartitionWriter, str | None]] = []  # committed so far, with where its old partition went
    try:
        try:
            for part in parts:
                part._seal()
        except FileNotFoundError:
            if lake.write_guard is not None:  # its folder removed by an erasure request (Lake.leftovers): say so
                for part in parts:
                    lake.write_guard(part.table)
            raise
        with lake.locked():
            try:
                if lake.write_guard is not None:
                    for part in parts:
                        lake.write_guard(part.table)
                for part in parts:
                    final, old = lake.partition_dir(part.table, part.cycle), None
                    if fs.get_file_info(final).type == pafs.FileType.Directory:
                        old = f"{lake.root}/{part.table}/{_OLD}{part.cycle}-{uuid.uuid4().hex[:8]}"
                        fs.move(final, old)
                    moved.append((part, old))
                    fs.move(part.tmp, final)
            except BaseException:
                for part, old in reversed(moved):  # the old partitions back where they were, each one tried
                    final = lake.partition_dir(part.table, part.cycle)
                    try:
                        if fs.get_file_info(part.tmp).type == pafs.FileType.NotFound:
                            fs.move(final, part.tmp)  # this one's new files had gone in: out again, removed below
                        if old is not None:
                            fs.move(old, final)
                    except OSError:  # left as .old-cycle=...: an erasure request's sweep puts it back (clear_leftovers)
                        pass
                raise
            for _, old in moved:  # committed: a failure to remove an old one leaves it to the sweep (leftovers)
                if old is not None:
                    try:
                        fs.delete_dir(old)
                    except OSError:
                        pass
    except BaseException:
        _abandon_all(parts)  # refused, or the lock could not be taken: no half-written folder
        raise


def _abandon_all(parts: list[PartitionWriter]) -> None:
    """Each partition's temporary folder removed, as far as it can be: the error that stopped the write is the one
    its caller raises."""
    for part in parts:
        try:
            part._abandon()
        except OSError:
            pass


class _CountingWriter:
    def __init__(self, writer: pq.ParquetWriter, rows: dict[str, int], name: str) -> None:
        self._writer, self._rows, self._name = writer, rows, name

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self._rows[self._name] += table.num_rows
