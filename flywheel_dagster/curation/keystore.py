"""The harvest's quarter state (exact-dedup keys, near-dedup band keys, positives per problem) as 64-bit keys in
sorted numpy runs, whose memory stays bounded however many traces the quarter holds: past `memory_keys` keys the
oldest runs move to disk, where one key in BLOCK stays in memory to find the rest.

Eight bytes a key in memory where a Python set of digests took about 90, and lookups a batch at a time
(np.searchsorted), not a trace at a time. Keys are 64-bit hashes: two distinct texts share one with probability
2^-64, so a quarter of a billion distinct keys expects 0.03 false matches in all (n^2 / 2^65)."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 256  # keys a spilled run reads per lookup; its first key stays in memory (an eighth of a byte a key)
MAX_DISK_RUNS = 4  # more, and the spilled runs merge into one (a lookup reads one block per run)


@dataclass
class _Run:
    keys: np.ndarray  # sorted, distinct, uint64
    values: np.ndarray | None  # uint32, aligned with keys


@dataclass
class _DiskRun:
    keys_path: Path
    values_path: Path | None
    n: int
    first: np.ndarray  # keys[::BLOCK]: the first key of every block


def _newest(keys: np.ndarray, values: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted distinct keys of `keys` (concatenated oldest to newest), each with its newest value."""
    order = np.argsort(keys, kind="stable")  # timsort: sorted runs merge in linear time
    keys = keys[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    return keys[last], (values[order][last] if values is not None else None)


class KeyStore:
    """A set of uint64 keys, or (with values=True) a map from them to uint32 values where the newest write wins.
    `find` and `add` take whole arrays; memory holds at most about `memory_keys` keys (three times that while two
    runs merge), the rest lives under `spill_dir` (a temporary folder, removed with the store)."""

    def __init__(self, memory_keys: int, values: bool = False, spill_dir: str | None = None) -> None:
        if memory_keys < BLOCK:
            raise ValueError(f"KeyStore memory_keys must be at least {BLOCK}, got {memory_keys}")
        self.memory_keys = memory_keys
        self.values = values
        self._spill_parent = spill_dir
        self._dir: Path | None = None
        self._runs: list[_Run] = []  # oldest first; sizes shrink geometrically, so about log2(keys) of them
        self._disk: list[_DiskRun] = []  # oldest first
        self._files = 0
        self.spilled = 0  # keys written to disk (counting rewrites by merges): the cost of the bound
        self.compactions = 0

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found, values): whether each key is in the store and, for a map, its newest value (0 when absent)."""
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        values = np.zeros(len(keys), dtype=np.uint32) if self.values else None
        if not len(keys) or not (self._runs or self._disk):
            return found, values
        sources = [*self._disk, *self._runs]  # oldest first
        for source in reversed(sources):  # newest first: the first match holds the newest value
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            q = keys[todo]
            hit, val = self._find_run(source, q) if isinstance(source, _Run) else self._find_disk(source, q)
            found[todo[hit]] = True
            if values is not None:
                values[todo[hit]] = val[hit]  # type: ignore[index]
        return found, values

    def add(self, keys: np.ndarray, values: np.ndarray | None = None) -> None:
        """Add keys (with their values, for a map), newer than everything added before; repeated keys keep the
        last one's value."""
        keys = np.asarray(keys, dtype=np.uint64)
        if not len(keys):
            return
        if self.values != (values is not None):
            raise ValueError("KeyStore.add: values are required for a map and not allowed for a set")
        vals = np.asarray(values, dtype=np.uint32) if values is not None else None
        self._runs.append(_Run(*_newest(keys, vals)))
        while len(self._runs) > 1 and len(self._runs[-2].keys) <= 2 * len(self._runs[-1].keys):
            newer, older = self._runs.pop(), self._runs.pop()
            both_values = None if older.values is None else np.concatenate((older.values, newer.values))
            self._runs.append(_Run(*_newest(np.concatenate((older.keys, newer.keys)), both_values)))
        while sum(len(r.keys) for r in self._runs) > self.memory_keys:
            self._spill(self._runs.pop(0))
        if len(self._disk) > MAX_DISK_RUNS:
            self._compact()

    @property
    def memory_bytes(self) -> int:
        """Bytes of keys and values held in memory (the runs and the spilled runs' block index)."""
        runs = sum(r.keys.nbytes + (r.values.nbytes if r.values is not None else 0) for r in self._runs)
        return runs + sum(d.first.nbytes for d in self._disk)

    def close(self) -> None:
        """Drop the state and remove the spill folder."""
        self._runs, self._disk = [], []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @staticmethod
    def _find_run(run: _Run, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        pos = np.searchsorted(run.keys, q)
        pos[pos == len(run.keys)] = 0
        hit = run.keys[pos] == q
        return hit, (run.values[pos] if run.values is not None else None)

    @staticmethod
    def _find_disk(run: _DiskRun, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Each query reads the one block that may hold it. The file is mapped for this call only, so the pages
        it touched leave the process's resident memory when it returns."""
        block = np.searchsorted(run.first, q, side="right") - 1
        hit = np.zeros(len(q), dtype=bool)
        values = np.zeros(len(q), dtype=np.uint32) if run.values_path is not None else None
        inside = np.flatnonzero(block >= 0)
        if not len(inside):
            return hit, values
        blocks = np.unique(block[inside])
        at = (blocks[:, None] * BLOCK + np.arange(BLOCK)).ravel()
        at = np.minimum(at, run.n - 1)  # the last block may be short: repeating its last key keeps `got` sorted
        mapped = np.memmap(run.keys_path, dtype=np.uint64, mode="r", shape=(run.n,))
        got = np.asarray(mapped[at])
        del mapped
        pos = np.searchsorted(got, q[inside])
        pos[pos == len(got)] = 0
        hit[inside] = got[pos] == q[inside]
        if values is not None:
            mapped = np.memmap(run.values_path, dtype=np.uint32, mode="r", shape=(run.n,))  # type: ignore[arg-type]
            values[inside] = np.asarray(mapped[at[pos]])
            del mapped
        return hit, values

    def _path(self, suffix: str) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="flywheel-harvest-state-", dir=self._spill_parent))
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._files += 1
        return self._dir / f"run{self._files:06d}.{suffix}"

    def _spill(self, run: _Run) -> None:
        """Write an in-memory run (older than every other in memory, newer than every run on disk) to disk."""
        keys_path = self._path("keys")
        run.keys.tofile(keys_path)
        values_path = None
        if run.values is not None:
            values_path = keys_path.with_suffix(".values")
            run.values.tofile(values_path)
        self.spilled += len(run.keys)
        self._disk.append(_DiskRun(keys_path, values_path, len(run.keys), run.keys[::BLOCK].copy()))

    def _compact(self) -> None:
        """Merge the runs on disk into one, a key range at a time (about memory_keys / 2 keys in memory at once),
        the newest value winning."""
        runs = self._disk
        total = sum(r.n for r in runs)
        pieces = max(1, -(-total // max(BLOCK, self.memory_keys // 2)))
        firsts = np.sort(np.concatenate([r.first for r in runs]))
        bounds = firsts[np.linspace(0, len(firsts), pieces, endpoint=False).astype(np.int64)[1:]]
        keys_path = self._path("keys")
        values_path = keys_path.with_suffix(".values") if self.values else None
        mapped = [np.memmap(r.keys_path, dtype=np.uint64, mode="r", shape=(r.n,)) for r in runs]
        cuts = [np.concatenate(([0], np.searchsorted(m, bounds), [r.n])) for m, r in zip(mapped, runs, strict=True)]
        del mapped
        firsts_out: list[np.ndarray] = []
        written = 0
        with open(keys_path, "wb") as kf, open(values_path, "wb") if values_path else nullcontext() as vf:
            for piece in range(len(bounds) + 1):
                ks, vs = [], []
                for r, cut in zip(runs, cuts, strict=True):  # oldest first, as _newest wants
                    lo, hi = int(cut[piece]), int(cut[piece + 1])
                    ks.append(np.fromfile(r.keys_path, dtype=np.uint64, count=hi - lo, offset=lo * 8))
                    if r.values_path is not None:
                        vs.append(np.fromfile(r.values_path, dtype=np.uint32, count=hi - lo, offset=lo * 4))
                keys, values = _newest(np.concatenate(ks), np.concatenate(vs) if vs else None)
                keys.tofile(kf)
                if values is not None:
                    values.tofile(vf)
                firsts_out.append(keys[(-written) % BLOCK :: BLOCK].copy())  # a view would keep all of keys
                written += len(keys)
        for r in runs:
            r.keys_path.unlink()
            if r.values_path is not None:
                r.values_path.unlink()
        self.spilled += written
        self.compactions += 1
        self._disk = [_DiskRun(keys_path, values_path, written, np.concatenate(firsts_out))]
