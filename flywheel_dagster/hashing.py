"""Content hashes the audit relies on: of one file, and of a folder tree in an unambiguous encoding."""

from __future__ import annotations

import hashlib
from pathlib import Path

TREE_HASH = "flywheel.tree/2"


def file_sha256(path: str | Path) -> tuple[str, int]:
    """(sha256, size in bytes) of one local file, read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def tree_sha256(folder: str | Path) -> str:
    """Hash of a folder tree: the sorted (relative path, file sha256) pairs, each field length-prefixed, so two
    different trees never share an encoding (no path or file boundary can be moved)."""
    root = Path(folder)
    h = hashlib.sha256(_field(TREE_HASH.encode()))
    for p in sorted((q for q in root.rglob("*") if q.is_file()), key=lambda q: q.relative_to(root).as_posix()):
        h.update(_field(p.relative_to(root).as_posix().encode()) + _field(bytes.fromhex(file_sha256(p)[0])))
    return h.hexdigest()


def legacy_tree_sha256(folder: str | Path) -> str:
    """The audit format 1 tree hash (path, NUL, bytes; ambiguous): kept to verify records written with it."""
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
