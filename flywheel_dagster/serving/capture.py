"""Durable trace capture: each completed chat completion becomes one JSON line in the lake, by date.

Layout: `<logs_dir>/date=YYYY-MM-DD/<gateway id>.jsonl`, in the chat-completions record format that the
harvest stage ingests (`traffic.source: logs`, see curation/ingest/), so a quarter's serving logs are the
next cycle's input without a conversion step.

Durability, by what fails:
- a clean shutdown (SIGTERM, SIGINT, `close()`): nothing is lost; the file is fsynced and closed;
- the gateway process crashes (SIGKILL, OOM): nothing is lost. A record is handed to the kernel with one
  `write()` on an O_APPEND descriptor before the client gets its response, so every completed request's
  record is in the page cache and reaches the disk without the process;
- the machine crashes (power, kernel): at most the records written since the last fsync are lost. The
  writer fsyncs every `fsync_interval_s` seconds and as soon as `max_unsynced` records wait, whichever
  comes first: that is the open buffer, bounded in time and in records. A line torn by the crash is
  quarantined by the ingest as `bad_json` (counted), never half-read;
- a write fails (disk full, quota, file size limit): append() raises OSError (the gateway answers 503) and
  the file is cut back to its last whole line first, so the part written is gone and the next record starts
  on a line of its own.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

SERVING_LOGS = "serving_logs"  # the lake folder `flywheel serve` writes to by default


@dataclass
class CaptureStats:
    written: int = 0
    fsyncs: int = 0
    write_failures: int = 0  # appends that raised OSError (their records are not in the file)
    files: list[str] = field(default_factory=list)


class TraceLog:
    """Append-only, date-partitioned JSON Lines writer; thread-safe; one file per gateway per day."""

    def __init__(
        self,
        logs_dir: str | Path,
        gateway_id: str | None = None,
        fsync_interval_s: float = 1.0,
        max_unsynced: int = 1000,
        clock: Callable[[], datetime] | None = None,  # UTC now; tests pass a fixed clock
    ) -> None:
        if fsync_interval_s <= 0:
            raise ValueError(f"fsync_interval_s must be > 0, got {fsync_interval_s}")
        if max_unsynced < 1:
            raise ValueError(f"max_unsynced must be >= 1, got {max_unsynced}")
        self.dir = Path(logs_dir)
        self.gateway_id = gateway_id or f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
        self.fsync_interval_s = fsync_interval_s
        self.max_unsynced = max_unsynced
        self.clock = clock or (lambda: datetime.now(UTC))
        self.stats = CaptureStats()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day: str | None = None
        self._unsynced = 0
        self._torn = False  # a failed write's tail could not be cut off: the next record starts a new line
        self._closed = False
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="trace-log-fsync", daemon=True)
        self._syncer.start()

    def path_for(self, day: str) -> Path:
        return self.dir / f"date={day}" / f"{self.gateway_id}.jsonl"

    def now(self) -> datetime:
        return self.clock()

    def append(self, record: dict) -> None:
        """Write one record (its `timestamp` picks the day's file); returns once the kernel has the line."""
        ts = record.get("timestamp")
        if not isinstance(ts, str) or len(ts) < 10:
            raise ValueError(f"trace record needs an ISO 8601 'timestamp' string, got {ts!r}")
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            if self._closed:
                raise RuntimeError("trace log is closed")
            day = ts[:10]
            try:
                if day != self._day:
                    self._open(day)
                self._append_locked(day, line)
            except OSError:
                self.stats.write_failures += 1
                raise
            self.stats.written += 1
            self._unsynced += 1
            if self._unsynced >= self.max_unsynced:
                self._fsync()

    def _append_locked(self, day: str, line: bytes) -> None:
        """Write under an exclusive flock of the file, the lock `flywheel forget` takes while it rewrites a log
        without the user's lines (erasure.rewrite_log). A file it replaced meanwhile is reopened first, so the
        line goes to the new file, not to the unlinked old one."""
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            try:
                replaced = os.fstat(self._fd).st_ino != os.stat(self.path_for(day)).st_ino
            except FileNotFoundError:
                replaced = True
            if replaced:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._open(day)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._write(line)
        finally:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write(self, line: bytes) -> None:
        """One whole line or nothing: a failed or short write (ENOSPC, EFBIG, EDQUOT) is cut back to the end of
        the last record, so no fragment stays to be glued to the next record (one line of bad JSON, a trace
        lost). Only this writer appends to the file (one per gateway), under the lock: its end is ours."""
        end = os.fstat(self._fd).st_size
        if self._torn:
            line = b"\n" + line  # the earlier fragment is then a line of its own (quarantined), not a prefix
        view = memoryview(line)
        try:
            while view:  # a regular file takes the whole line in one write, unless it is full
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:
                if os.fstat(self._fd).st_size != end:
                    os.ftruncate(self._fd, end)
            except OSError:
                self._torn = True
            raise
        self._torn = False

    def _open(self, day: str) -> None:
        if self._fd is not None:
            self._fsync()
            os.close(self._fd)
            self._fd, self._day = None, None  # an open that fails below must not leave a closed descriptor
            self._torn = False
        path = self.path_for(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._day = day
        if str(path) not in self.stats.files:
            self.stats.files.append(str(path))
        _fsync_dir(path.parent)  # the new file's directory entry survives a crash too

    def _fsync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self.stats.fsyncs += 1
        self._unsynced = 0

    def _sync_loop(self) -> None:
        # The fsync runs on a duplicate descriptor outside the lock: appends (the gateway's event loop) never
        # wait for the disk.
        while not self._stop.wait(self.fsync_interval_s):
            with self._lock:
                if self._closed or self._fd is None or not self._unsynced:
                    continue
                fd = os.dup(self._fd)
                self._unsynced = 0
            try:
                os.fsync(fd)
                self.stats.fsyncs += 1
            finally:
                os.close(fd)

    def flush(self) -> None:
        with self._lock:
            self._fsync()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._fsync()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._closed = True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iso_now(clock: Callable[[], datetime] | None = None) -> str:
    now = (clock or (lambda: datetime.now(UTC)))()
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
