"""Finding a quarter's log files: the partition's window, the paths searched, each file's kind by its name."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from datetime import datetime

_DATE_DIR = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})(?:/|$)")


@dataclass(frozen=True)
class Window:
    """The partition's time window, [start, end) in UTC."""

    start: datetime
    end: datetime

    def contains(self, ts: datetime) -> bool:
        return self.start <= ts < self.end


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
