"""Reading log bytes: gzip inflated up to any damage, lines with a size limit, and what a quarantine entry
shows of a line (a redacted excerpt, the user id, where an unexpected error was raised)."""

from __future__ import annotations

import io
import re
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

EXCERPT_BYTES = 240
_SKIP_BYTES = 1 << 16  # the rest of an oversized line is read and dropped this much at a time
_GZIP_STEP = 1 << 16  # compressed bytes inflated at a time


_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
# \n as a space: the excerpt is one line to read, and a cue ("Phone:\n06 12 ...") then reaches its number.
_ESCAPED = {'"': '"', "\\": "\\", "/": "/", "b": " ", "f": " ", "n": " ", "r": " ", "t": " "}


def _unescaped(text: str) -> str:
    """JSON's string escapes undone (a logger that escapes everything beyond ASCII writes "Ren\\u00e9e" and
    "t\\u00e9l 06 12 34 56 78": the detectors see neither the name nor the cue), surrogate pairs joined; again
    until nothing changes (each pass shortens the text), for JSON held in JSON strings at any depth."""
    while "\\" in text:
        out = _ESCAPE.sub(lambda m: chr(int(m[1][1:], 16)) if m[1][0] == "u" else _ESCAPED[m[1]], text)
        out = out.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if out == text:
            break
        text = out
    return text


def _excerpt(raw: bytes) -> str:
    try:
        from flywheel_dagster.curation.pii import redact

        # Redact a generous head first, then cut: cut first, and a card or address split by the cut is no
        # longer recognised, so its first half would stay ("4111 1111 "). The excerpt shows the line with its
        # JSON escapes undone, as the detectors read it.
        head = _unescaped(raw[: EXCERPT_BYTES * 32].decode("utf-8", errors="replace"))
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

    def readinto(self, buf: bytearray | memoryview) -> int:
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


class _Range(io.RawIOBase):
    """The next `size` bytes of a file, as a stream of their own (a piece of a log file, see ingestor.Piece)."""

    def __init__(self, raw: BinaryIO, size: int) -> None:
        self._raw = raw
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self._left <= 0:
            return 0
        n = self._raw.readinto(memoryview(buf)[: min(len(buf), self._left)]) or 0
        self._left -= n
        return n


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
