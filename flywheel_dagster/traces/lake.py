"""The trace lake: Parquet tables under <root>/<table>/cycle=<key>/, written atomically per cycle.

A write goes to a temporary folder beside the target and is renamed into place, so readers see the old
partition or the new one, never half of one, and a rerun of a cycle replaces its rows instead of adding
to them. Any pyarrow filesystem works (local paths, s3://, gs://); the rename is atomic on local disks.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

DATA_FILE = "part-00000.parquet"


@dataclass(frozen=True)
class LakeFile:
    uri: str
    sha256: str
    rows: int
    bytes: int


class Lake:
    """Read and write one cycle's partition of a table."""

    def __init__(self, root: str) -> None:
        self.fs, self.root = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
        self.root = self.root.rstrip("/")
        self.fs.create_dir(self.root, recursive=True)
        self._scheme = root.split("://", 1)[0] + "://" if "://" in root else "file://"

    def partition_dir(self, table: str, cycle: str) -> str:
        return f"{self.root}/{table}/cycle={cycle}"

    def uri(self, table: str, cycle: str, name: str = DATA_FILE) -> str:
        return f"{self._scheme}{self.partition_dir(table, cycle)}/{name}"

    def exists(self, table: str, cycle: str, name: str = DATA_FILE) -> bool:
        info = self.fs.get_file_info(f"{self.partition_dir(table, cycle)}/{name}")
        return info.type == pafs.FileType.File

    def write_partition(self, table: str, cycle: str, files: dict[str, bytes | pa.Table]) -> dict[str, LakeFile]:
        """Replace the whole partition with these files (Parquet tables or raw bytes), atomically."""
        final = self.partition_dir(table, cycle)
        tmp = f"{self.root}/{table}/.tmp-cycle={cycle}-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(tmp, recursive=True)
        written: dict[str, LakeFile] = {}
        for name, content in files.items():
            path = f"{tmp}/{name}"
            if isinstance(content, pa.Table):
                pq.write_table(content, path, filesystem=self.fs, compression="zstd")
                rows = content.num_rows
            else:
                with self.fs.open_output_stream(path) as out:
                    out.write(content)
                rows = 0
            digest, size = self._sha256(path)
            written[name] = LakeFile(uri=f"{self._scheme}{final}/{name}", sha256=digest, rows=rows, bytes=size)
        old = None
        if self.fs.get_file_info(final).type == pafs.FileType.Directory:
            old = f"{self.root}/{table}/.old-cycle={cycle}-{uuid.uuid4().hex[:8]}"
            self.fs.move(final, old)
        self.fs.move(tmp, final)
        if old is not None:
            self.fs.delete_dir(old)
        return written

    def write_table(self, table: str, cycle: str, data: pa.Table) -> LakeFile:
        return self.write_partition(table, cycle, {DATA_FILE: data})[DATA_FILE]

    def read_table(self, table: str, cycle: str, name: str = DATA_FILE) -> pa.Table:
        path = f"{self.partition_dir(table, cycle)}/{name}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(f"lake table {table!r} has no partition for cycle {cycle!r} ({path})")
        return pq.read_table(path, filesystem=self.fs)

    def read_bytes(self, table: str, cycle: str, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.partition_dir(table, cycle)}/{name}") as f:
            return f.read()

    def _sha256(self, path: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size
