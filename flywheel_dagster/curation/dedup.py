"""Exact and near-duplicate detection: normalized-text keys, and MinHash LSH (datasketch) for near-dups.

MinHash signatures are computed for a whole batch at once with numpy (the same universal-hashing scheme
as datasketch's "legacy" scheme: h(x) = (a * x + b) mod (2^61 - 1), low 32 bits), and the banded index is datasketch's
`MinHashLSH`, fed `LeanMinHash` objects built from those signatures. Per-document datasketch `update`
calls ran at about 4,000 documents/s here; the batched signatures keep the stage well above that.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

_SPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_PRIME = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)


def normalize(text: str) -> str:
    """Text as compared by exact dedup: case-folded, whitespace collapsed."""
    return _SPACE.sub(" ", text.casefold()).strip()


def exact_key(prompt: str, completion: str) -> bytes:
    return (normalize(prompt) + "\x1f" + normalize(completion)).encode()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def shingles(text: str, size: int) -> list[int]:
    """crc32 of each run of `size` tokens (the whole token list when shorter)."""
    toks = tokens(text)
    if len(toks) <= size:
        return [zlib.crc32(" ".join(toks).encode())]
    return [zlib.crc32(" ".join(toks[i : i + size]).encode()) for i in range(len(toks) - size + 1)]


class NearDuplicateIndex:
    """Streaming near-duplicate detection: `check_and_add` says whether a text is within the Jaccard
    threshold of one seen before (and indexes it when it is not)."""

    def __init__(self, threshold: float, num_perm: int = 64, shingle_size: int = 3, seed: int = 1) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate Jaccard threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        rng = np.random.RandomState(seed)
        self._a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self._b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        from datasketch import MinHashLSH  # imports scipy: only when a harvest runs

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._next = 0

    def signatures(self, texts: list[str], chunk_docs: int = 1024) -> np.ndarray:
        """MinHash signatures (len(texts) x num_perm, uint64) for a batch of texts."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        for lo in range(0, len(texts), chunk_docs):
            hashes = [shingles(t, self.shingle_size) for t in texts[lo : lo + chunk_docs]]
            lengths = np.fromiter((len(h) for h in hashes), dtype=np.int64, count=len(hashes))
            flat = np.fromiter((x for h in hashes for x in h), dtype=np.uint64, count=int(lengths.sum()))
            values = (_mulmod(flat[:, None], self._a[None, :]) + self._b[None, :]) % _PRIME & _MAX32
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            out[lo : lo + len(hashes)] = np.minimum.reduceat(values, starts, axis=0)
        return out

    def check_and_add(self, signatures: np.ndarray) -> list[bool]:
        """For each signature in order: True if it near-duplicates an earlier one (this batch included)."""
        from datasketch import LeanMinHash

        dup = []
        for sig in signatures:
            m = LeanMinHash(seed=self.seed, hashvalues=sig, scheme="legacy")
            if self.lsh.query(m):
                dup.append(True)
                continue
            self.lsh.insert(self._next, m, check_duplication=False)
            self._next += 1
            dup.append(False)
        return dup


def _mulmod(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(x * a) mod (2^61 - 1) for x < 2^32 and a < 2^61, without 64-bit overflow."""
    a_lo = a & np.uint64(0x3FFFFFFF)  # 30 bits
    a_hi = a >> np.uint64(30)  # 31 bits
    lo = x * a_lo  # < 2^62
    hi = (x * a_hi) % _PRIME  # x * a_hi < 2^63
    # hi * 2^30 mod p: split again to stay below 2^64.
    hi = ((hi << np.uint64(30)) & _PRIME) + (hi >> np.uint64(31))
    return (lo % _PRIME + hi) % _PRIME
