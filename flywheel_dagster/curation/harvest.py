"""The harvest: verify, decontaminate, redact PII, filter, deduplicate and label a quarter's traces,
streaming Arrow record batches; then the training dataset (reformatted positives, human anchors, and
positive/negative pairs).

Every trace read ends in exactly one label, and every trace kept out of training has a counted reason:
read = positive + negative + unverifiable + sum(drop/<reason>). Reasons are checked in DROP_REASONS
order; the first that applies is recorded.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel_dagster.config import HarvestConfig
from flywheel_dagster.curation import pii
from flywheel_dagster.curation.batching import Memo, paused_gc
from flywheel_dagster.curation.decontam import BenchmarkIndex
from flywheel_dagster.curation.dedup import NearDuplicateIndex, normalize, tokens
from flywheel_dagster.curation.keystore import KeyStore
from flywheel_dagster.curation.monitors import MonitorAccumulator, digest64
from flywheel_dagster.curation.reformat import check_strategies, pick, rephrase, template
from flywheel_dagster.engines.base import InferenceEngine
from flywheel_dagster.tasks.base import Problem, TaskSource
from flywheel_dagster.traces.schema import (
    CONTEXT_PII,
    HARVESTED_SCHEMA,
    PAIRS_SCHEMA,
    PROMPTS_SCHEMA,
    TRAINING_SCHEMA,
    context_pii_pairs,
)

LABELS = ("positive", "negative", "unverifiable", "dropped")
MEMO_ENTRIES = 20_000  # per memo: at 2 KB a text, tens of MB at most
MEMO_CHARS = 32_000_000  # the redaction memo holds every distinct text seen lately: bounded by their length
DROP_REASONS = (
    "decontaminated",  # prompt shares an n-gram with a benchmark problem
    "format_violation",  # does not fit the task's training format
    "truncated",  # generation stopped at the token limit
    "too_short",
    "too_long",
    "repetition",  # heavy n-gram repetition in the reasoning
    "missing_final_answer",
    "exact_duplicate",
    "near_duplicate",
    "positives_per_problem_cap",
)


def repeated_fraction(text: str, n: int) -> float:
    """Share of token n-grams in `text` that repeat an earlier one."""
    t = tokens(text)
    total = len(t) - n + 1
    if total <= 1:
        return 0.0
    return 1 - _distinct_ngrams(t, n) / total


def repeats_too_much(text: str, n: int, limit: float) -> bool:
    """repeated_fraction(text, n) > limit, mostly without building the n-grams: n-grams that start with different
    tokens differ, so the distinct first tokens bound the distinct n-grams from below, and the share from above."""
    t = tokens(text)
    total = len(t) - n + 1
    if total <= 1:
        return 0.0 > limit
    if 1 - len(set(t[:total])) / total <= limit:
        return False
    return 1 - _distinct_ngrams(t, n) / total > limit


def _distinct_ngrams(t: list[str], n: int) -> int:
    return len(set(zip(*(t[i:] for i in range(n)), strict=False)))  # zip(t, t[1:], ...): shortest list first


def _text_chars(key: object) -> int:
    return len(key[0])  # type: ignore[index]


def _row_chars(key: object) -> int:
    return sum(len(v) for v in key if v is not None)  # type: ignore[attr-defined]


@dataclass
class HarvestStats:
    counts: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)  # per step, for benchmarks/harvest.py

    def as_counts(self) -> dict[str, int]:
        out = {"read": self.counts["read"]}
        out.update({label: self.counts[label] for label in LABELS[:3]})
        out["dropped"] = sum(self.counts[f"drop/{r}"] for r in DROP_REASONS)
        out.update({f"drop/{r}": self.counts[f"drop/{r}"] for r in DROP_REASONS})
        return out


# The trace columns the per-trace work reads: rows equal in these get equal results.
ROW_INPUTS = ("prompt", "completion", "reasoning", "answer", "reference_answer", "finish_reason", CONTEXT_PII)
# The trace columns the harvested table keeps, in its order: all but context_pii (PII, never training text).
_KEPT = HARVESTED_SCHEMA.names[: HARVESTED_SCHEMA.get_field_index("label")]
# Positions in a per-row result tuple (see RowWorker._distinct_rows), and its length.
_KINDS, _DROP, _SIG, _RESULT_FIELDS = 7, 8, 10, 13
# RowWork's codes: a row's drop reason (0: none, else 1 + its place in DROP_REASONS), verdict and label.
_DROP_CODE: dict[str | None, int] = {None: 0, **{r: k + 1 for k, r in enumerate(DROP_REASONS)}}
_DROP_NAMES = pa.array([None, *DROP_REASONS], pa.string())
_EXACT, _NEAR, _CAP = (_DROP_CODE[r] for r in ("exact_duplicate", "near_duplicate", "positives_per_problem_cap"))
_CORRECT_CODE = {None: -1, False: 0, True: 1}
_POSITIVE, _NEGATIVE, _UNVERIFIABLE, _DROPPED = range(4)  # places in LABELS
_LABEL_NAMES = pa.array(LABELS, pa.string())
_NO_KEY = bytes(8)


@dataclass
class RowWork:
    """What the harvest decides about each trace of a batch on its own, with no quarter state: the batch's
    harvested rows but for label and drop reason (redacted, verdicts, pii_types, as Arrow columns), the filters'
    drop reason, exact-dedup keys, monitor keys and (optionally) MinHash signatures. Picklable, and small
    apart from its Arrow tables: the Ray engine computes it in workers, and the driver decides the rest in
    order on numpy arrays, without turning the texts back into Python objects."""

    harvested: pa.Table  # HARVESTED_SCHEMA's columns but label and drop_reason
    correct: np.ndarray  # int8 per row: 1 verified correct, 0 wrong, -1 not verified
    answers: list[str | None]  # the verifier's final answers (the monitors' answer diversity)
    drop: np.ndarray  # uint8 per row: the filters' drop reason, 0 for none (_DROP_CODE)
    keys: np.ndarray  # uint64 per row: the exact-dedup key of each row the filters kept (0 for the others)
    prompt_keys: np.ndarray  # uint64: monitors.digest64 of each redacted prompt
    sample_keys: np.ndarray  # uint64: monitors.digest64 of each trace id: the monitors' sample keeps the smallest
    problem_keys: np.ndarray  # uint64: the per-problem cap's key, digest64 of the problem id, else the prompt key
    signatures: np.ndarray | None  # MinHash rows (prompt + reasoning) of the rows the filters kept, else zeros
    pii: Counter
    seconds: Counter


class RowWorker:
    """The per-trace part of the harvest. Its memos only save work: the same text always gets the same answer,
    whichever worker (or order) it comes in."""

    def __init__(self, task: TaskSource, cfg: HarvestConfig, benchmark_prompts: Iterable[str]) -> None:
        self.task = task
        self.cfg = cfg
        self.decontam = BenchmarkIndex.for_task(task, benchmark_prompts, cfg.decontamination_ngram)
        d = cfg.dedup
        self.hasher = (
            NearDuplicateIndex(d.jaccard_threshold, d.num_perm, d.shingle_tokens) if d.near_duplicates else None
        )
        # Verdicts and redactions of texts seen before in the quarter (both are pure functions of the text),
        # and whole rows' results by their content (ROW_INPUTS): a repeated trace costs one lookup.
        self._verified = Memo(MEMO_ENTRIES)
        self._redacted = Memo(MEMO_ENTRIES * 10, MEMO_CHARS, _text_chars)
        self._rows = Memo(200_000, MEMO_CHARS * 2, _row_chars)
        self._problem_key = Memo(MEMO_ENTRIES * 10, MEMO_CHARS, len)  # problem id -> its cap key
        # context_pii cell -> its known values' patterns: about 110 bytes of patterns a character, so 1M at most
        self._contexts = Memo(MEMO_ENTRIES, 1_000_000, len)

    def work(self, batch: pa.RecordBatch | pa.Table, signatures: bool = False) -> RowWork:
        with paused_gc():
            return self._work(batch, signatures)

    def _work(self, batch: pa.RecordBatch | pa.Table, signatures: bool) -> RowWork:
        """Each distinct row content (the columns in ROW_INPUTS) is worked on once: a row seen before in the
        quarter (the row memo) or earlier in the batch takes that row's results, computed or not."""
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        n = table.num_rows
        if CONTEXT_PII not in table.schema.names:  # traces ingested before the column was
            table = table.append_column(CONTEXT_PII, pa.nulls(n, pa.string()))
        seconds: Counter = Counter()
        t = time.perf_counter()
        need_sig = signatures and self.hasher is not None
        inputs = list(zip(*(table.column(c).to_pylist() for c in ROW_INPUTS), strict=True)) if n else []
        memo = self._rows
        results: list[tuple | None] = [None] * n
        todo: list[int] = []  # the first row of each content not in the memo
        first: dict[tuple, int] = {}
        pending: list[tuple[int, int]] = []  # (row, its position in todo)
        for i, key in enumerate(inputs):
            r = memo.get(key)
            if r is None or (need_sig and r[_SIG] is None and r[_DROP] is None):
                j = first.get(key)
                if j is None:
                    j = first[key] = len(todo)
                    todo.append(i)
                pending.append((i, j))
            else:
                results[i] = r
        seconds["repeats"] += time.perf_counter() - t
        if todo:
            computed = self._distinct_rows(table.take(todo) if len(todo) < n else table, need_sig, seconds)
            for j, i in enumerate(todo):
                memo.keep(inputs[i], computed[j])
            for i, j in pending:
                results[i] = computed[j]
        t = time.perf_counter()
        pii_counts: Counter = Counter()
        for r in results:
            if r[_KINDS]:  # type: ignore[index]
                pii_counts.update(r[_KINDS])  # type: ignore[index]
        if n:
            columns = [list(c) for c in zip(*results, strict=True)]  # type: ignore[misc]
        else:
            columns = [[] for _ in range(_RESULT_FIELDS)]
        (
            correct, verdicts, answers, prompts, completions, reasonings, red_answers, kinds, drop, keys, sig, pkeys,
            red_references,
        ) = columns  # fmt: skip
        sigs = None
        if need_sig:
            sigs = np.zeros((n, self.hasher.num_perm), dtype=np.uint64)  # type: ignore[union-attr]
            for i, s in enumerate(sig):
                if s is not None:
                    sigs[i] = s
        prompt_keys = np.fromiter(pkeys, np.uint64, n)
        correct_codes = np.fromiter(map(_CORRECT_CODE.__getitem__, correct), np.int8, n)
        drop_codes = np.fromiter(map(_DROP_CODE.__getitem__, drop), np.uint8, n)
        key_codes = np.frombuffer(b"".join([k or _NO_KEY for k in keys]), np.uint64) if n else np.zeros(0, np.uint64)
        sample_keys = np.fromiter(map(digest64, table.column("trace_id").to_pylist()), np.uint64, n)
        problem_keys = self._problem_keys(table.column("problem_id").to_pylist(), prompt_keys)
        seconds["repeats"] += time.perf_counter() - t
        t = time.perf_counter()
        out = table.select(_KEPT)
        for name, values, type_ in (
            ("prompt", prompts, pa.string()),
            ("completion", completions, pa.string()),
            ("reasoning", reasonings, pa.string()),
            ("answer", red_answers, pa.string()),
            ("reference_answer", red_references, pa.string()),
            ("correct", correct, pa.bool_()),
            ("verifier", [self.task.verifier_name] * n, pa.string()),
            ("verdict", verdicts, pa.string()),
        ):
            out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, type_))
        out = out.append_column("pii_types", pa.array([",".join(sorted(set(k))) or None for k in kinds], pa.string()))
        seconds["assemble"] += time.perf_counter() - t
        return RowWork(
            out, correct_codes, answers, drop_codes, key_codes, prompt_keys, sample_keys, problem_keys, sigs,
            pii_counts, seconds,
        )  # fmt: skip

    def _context_known(self, cell: str) -> list[tuple[str, str, re.Pattern]]:
        """pii.known_values of a context_pii cell's pairs (names only where names are redacted), made once a
        cell: a session's requests carry the same earlier turns, and a tool's result may name thousands."""
        known = self._contexts.get(cell)
        if known is None:
            pairs = [(k, v) for k, v in context_pii_pairs(cell) or () if k != "PERSON" or self.cfg.redact_names]
            known = self._contexts.keep(cell, pii.known_values(pairs))
        return known

    def _problem_keys(self, problem_ids: list[str | None], prompt_keys: np.ndarray) -> np.ndarray:
        """The per-problem cap's key of each row: digest64 of its problem id, else its prompt's digest."""
        keys = prompt_keys.copy()
        memo = self._problem_key
        for i, pid in enumerate(problem_ids):
            if pid:
                key = memo.get(pid)
                keys[i] = key if key is not None else memo.keep(pid, digest64("\x00problem_id\x00" + pid))
        return keys

    def _distinct_rows(self, table: pa.Table, need_sig: bool, seconds: Counter) -> list[tuple]:
        """The per-row results (in _SIG order) of rows of distinct content."""
        n = table.num_rows

        def timed(step: str, start: float) -> float:
            now = time.perf_counter()
            seconds[step] += now - start
            return now

        t = time.perf_counter()
        # Verify against the reference answer (raw text: redaction must not change the verdict).
        completions = table.column("completion").to_pylist()
        references = table.column("reference_answer").to_pylist()
        correct, verdicts, answers = [None] * n, ["no_reference"] * n, table.column("answer").to_pylist()
        verify, verified = self.task.verify, self._verified
        for i in range(n):
            ref = references[i]
            if ref is not None:
                key = (completions[i], ref)
                v = verified.get(key) or verified.keep(key, verify(completions[i], ref))
                correct[i], verdicts[i], answers[i] = v.correct, v.reason, v.answer
            elif answers[i] is None:
                answers[i] = self.task.parse(completions[i]).answer
        t = timed("verify", t)

        # Decontaminate on the raw prompt.
        raw_prompts = table.column("prompt").to_pylist()
        contaminated = [self.decontam.contaminated(p) for p in raw_prompts]
        t = timed("decontaminate", t)

        # Redact PII in every text column (the answer is the verifier's), recording which types each row lost.
        pii_rows: list[list[str]] = [[] for _ in range(n)]
        redacted = {}
        texts = {
            "prompt": raw_prompts,
            "completion": completions,
            "reasoning": table.column("reasoning").to_pylist(),
            "answer": answers,
            # a client's reference (metadata.reference_answer): verified against raw above, kept redacted
            "reference_answer": references,
        }
        found: list[list[tuple[str, str]]] = [[] for _ in range(n)]  # per row, the PII found, by type and value
        for col, (values, kinds, seen) in zip(
            texts, pii.redact_texts(list(texts.values()), self.cfg.redact_names, self._redacted), strict=True
        ):
            redacted[col] = values
            for i, k in enumerate(kinds):
                if k:
                    pii_rows[i].extend(k)
                    found[i].extend(seen[i])
        # What one text of a trace named, another may repeat without the cue that found it (the SSN a question
        # names, in the sum its answer does; the surname a greeting gives; the phone number a system prompt
        # gives, in the answer): in a trace with any PII, each value found goes from all of its texts. The
        # request's other turns' values come found by the ingest (context_pii), their patterns made once a cell.
        contexts = table.column(CONTEXT_PII).to_pylist()
        for i in [i for i in range(n) if found[i] or contexts[i] is not None]:
            known = pii.known_values(found[i]) if found[i] else []
            if contexts[i] is not None:
                known += self._context_known(contexts[i])
            for col in texts:
                if known and redacted[col][i] is not None:
                    redacted[col][i], more = pii.redact_known(redacted[col][i], known)
                    pii_rows[i].extend(more)
        prompts, completions_r, reasonings = redacted["prompt"], redacted["completion"], redacted["reasoning"]
        t = timed("pii", t)

        # Quality filters, in DROP_REASONS order.
        f = self.cfg.filters
        finish = table.column("finish_reason").to_pylist()
        drop: list[str | None] = [None] * n
        fmt = self.task.format_violation
        for i in range(n):
            c = completions_r[i]
            if contaminated[i]:
                drop[i] = "decontaminated"
            elif fmt(prompts[i], c):
                drop[i] = "format_violation"
            elif f.drop_truncated and finish[i] == "length":
                drop[i] = "truncated"
            elif len(c) < f.min_completion_chars:
                drop[i] = "too_short"
            elif len(c) > f.max_completion_chars:
                drop[i] = "too_long"
            elif len(reasonings[i]) > 40 and repeats_too_much(
                reasonings[i], f.repetition_ngram, f.max_repeated_ngram_fraction
            ):
                drop[i] = "repetition"
            elif answers[i] is None:
                drop[i] = "missing_final_answer"
        t = timed("filters", t)

        # Exact-dedup keys of the rows the filters kept: blake2b of normalize(prompt) + "\x1f" + normalize(completion),
        # each distinct prompt normalized once.
        normal: dict[str, str] = {}
        keys: list[bytes | None] = [None] * n
        for i in range(n):
            if drop[i] is None:
                p = prompts[i]
                head = normal[p] if p in normal else normal.setdefault(p, normalize(p) + "\x1f")
                keys[i] = hashlib.blake2b((head + normalize(completions_r[i])).encode(), digest_size=8).digest()
        t = timed("exact_dedup", t)

        sigs: list[np.ndarray | None] = [None] * n
        if need_sig:
            kept = [i for i in range(n) if drop[i] is None]
            if kept:
                rows = self.hasher.signatures_of([prompts[i] for i in kept], [reasonings[i] for i in kept])  # type: ignore[union-attr]
                for i, row in zip(kept, rows, strict=True):
                    sigs[i] = row
            timed("near_dedup", t)
        by_prompt: dict[str, int] = {}
        prompt_keys = [by_prompt[p] if p in by_prompt else by_prompt.setdefault(p, digest64(p)) for p in prompts]
        return list(
            zip(
                correct, verdicts, answers, prompts, completions_r, reasonings, redacted["answer"], pii_rows, drop,
                keys, sigs, prompt_keys, redacted["reference_answer"], strict=True,
            )
        )  # fmt: skip


class Harvester:
    """Labels traces batch by batch; state (dedup keys, LSH index, caps, monitors) spans the whole quarter.

    `process` = the per-trace part (RowWorker.work) then `decide`, the part that depends on the traces before:
    exact and near duplicates (the first in the quarter's order survives), the per-problem cap, the monitors.
    The Ray engine runs the first part in workers and calls `decide` on their results in the same order."""

    def __init__(
        self, task: TaskSource, cfg: HarvestConfig, benchmark_prompts: Iterable[str], memory_keys: int | None = None
    ) -> None:
        """`memory_keys`: keys each of the quarter's stores holds in memory before spilling; by default from
        dedup.state_memory_mb (tests set a few hundred to take the spill path on a small input)."""
        self.task = task
        self.cfg = cfg
        self.rows = RowWorker(task, cfg, benchmark_prompts)
        d = cfg.dedup
        # Four stores share state_memory_mb: 8 bytes a key each, and one merge at a time needs three times a
        # store's keys on top (concatenation, order, result).
        memory_keys = memory_keys or d.state_memory_mb * 2**20 // (8 * 7)
        self.near = (
            {
                label: NearDuplicateIndex(
                    d.jaccard_threshold, d.num_perm, d.shingle_tokens, memory_keys=memory_keys,
                    spill_dir=d.state_spill_dir,
                )
                for label in ("positive", "negative")
            }
            if d.near_duplicates
            else None
        )  # fmt: skip
        self.seen = KeyStore(memory_keys, spill_dir=d.state_spill_dir)  # exact-dedup keys
        self.per_problem = KeyStore(memory_keys, values=True, spill_dir=d.state_spill_dir)  # positives kept
        self.stats = HarvestStats()
        self.monitors = MonitorAccumulator(cfg.monitors.sample_size)

    @property
    def state(self) -> list[KeyStore]:
        """The quarter's stores: exact-dedup keys, per-problem counts, and the LSH bands of each label."""
        return [self.seen, self.per_problem, *(index.bands for index in (self.near or {}).values())]

    def close(self) -> None:
        """Drop the quarter's state and remove what it spilled to disk (also done when the harvester is collected)."""
        for store in self.state:
            store.close()

    def process(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """Harvested rows (HARVESTED_SCHEMA) for one batch of traces (TRACE_SCHEMA)."""
        return self.decide(self.rows.work(batch))

    def decide(self, work: RowWork) -> pa.Table:
        """The harvested rows of one batch's RowWork, batches taken in the quarter's order."""
        with paused_gc():
            return self._decide(work)

    def _decide(self, w: RowWork) -> pa.Table:
        out, n = w.harvested, w.harvested.num_rows
        counts = self.stats.counts
        counts["read"] += n
        self.stats.pii.update(w.pii)
        self.stats.seconds.update(w.seconds)
        drop = w.drop.copy()  # drop-reason codes (_DROP_CODE)
        t = time.perf_counter()

        # Exact duplicates, across the whole quarter: a key seen in an earlier batch, or earlier in this one. With
        # exact dedup off they stay in, but the near_duplicate_rate monitor still counts them: it watches the
        # traffic, not the dedup.
        reached = np.flatnonzero(drop == 0)
        if len(reached):
            keys = w.keys[reached]
            dup = self.seen.find(keys)[0]
            _, first = np.unique(keys, return_index=True)
            new = np.ones(len(keys), dtype=bool)
            new[first] = False
            dup |= new  # now: not the first of its key in this batch
            self.seen.add(keys[~dup])
            if self.cfg.dedup.exact:
                drop[reached[dup]] = _EXACT
            else:
                self.monitors.duplicates += int(dup.sum())
        self.monitors.dedup_seen += len(reached)
        t = self._timed("exact_dedup", t)

        if not self.cfg.verify:  # the no_verification experiment: every kept trace trains
            labels = np.full(n, _POSITIVE, dtype=np.uint8)
        else:
            labels = np.choose(w.correct + 1, [_UNVERIFIABLE, _NEGATIVE, _POSITIVE]).astype(np.uint8)
        labels[drop != 0] = _DROPPED

        # Near duplicates (MinHash LSH on prompt + reasoning), within positives and within negatives, so a
        # negative that differs from a positive in one step stays available as its pair.
        if self.near is not None:
            for label, index in self.near.items():
                rows = np.flatnonzero(labels == LABELS.index(label))
                if len(rows):
                    if w.signatures is not None:
                        sigs = w.signatures[rows]
                    else:
                        some = out.select(["prompt", "reasoning"]).take(rows)
                        sigs = index.signatures_of(some.column(0).to_pylist(), some.column(1).to_pylist())
                    near = rows[np.asarray(index.check_and_add(sigs), dtype=bool)]
                    labels[near], drop[near] = _DROPPED, _NEAR
            t = self._timed("near_dedup", t)

        # At most `cap` positives a problem (its id, else its prompt), the first in the quarter's order.
        positives = np.flatnonzero(labels == _POSITIVE)
        if len(positives):
            keys = w.problem_keys[positives]
            before = self.per_problem.find(keys)[1].astype(np.int64)  # type: ignore[union-attr]
            order = np.argsort(keys, kind="stable")
            pos = np.arange(len(keys))
            starts = np.concatenate(([True], keys[order][1:] != keys[order][:-1]))
            rank = np.empty_like(pos)  # how many positives of its problem come before it in the batch
            rank[order] = pos - np.maximum.accumulate(np.where(starts, pos, 0))
            cap = self.cfg.max_positives_per_problem
            over = positives[before + rank >= cap]
            labels[over], drop[over] = _DROPPED, _CAP
            problems, first, seen = np.unique(keys, return_index=True, return_counts=True)
            self.per_problem.add(problems, np.minimum(before[first] + seen, cap).astype(np.uint32))
        # The rows the monitors see: kept, or dropped as a duplicate or over the cap.
        duplicates = (drop == _EXACT) | (drop == _NEAR)
        self.monitors.duplicates += int(duplicates.sum())
        watched = np.flatnonzero((drop == 0) | duplicates | (drop == _CAP))
        for code, k in enumerate(np.bincount(labels[drop == 0], minlength=len(LABELS)).tolist()):
            if k:
                counts[LABELS[code]] += k
        for code, k in enumerate(np.bincount(drop, minlength=len(_DROP_CODE)).tolist()[1:], start=1):
            if k:
                counts[f"drop/{DROP_REASONS[code - 1]}"] += k
        reasonings = out.column("reasoning")
        self.monitors.add_rows(
            w.sample_keys, w.prompt_keys, w.answers, w.correct, watched, lambda i: reasonings[i].as_py()
        )

        at = out.schema.get_field_index("pii_types")
        out = out.add_column(at, "drop_reason", _DROP_NAMES.take(pa.array(drop)))
        out = out.add_column(at, "label", _LABEL_NAMES.take(pa.array(labels)))
        self._timed("assemble", t)
        return out.cast(HARVESTED_SCHEMA)

    def _timed(self, step: str, start: float) -> float:
        now = time.perf_counter()
        self.stats.seconds[step] += now - start
        return now


@dataclass
class HarvestResult:
    harvested: pa.Table
    counts: dict[str, int]
    pii: dict[str, int]


def harvest(
    traces: pa.Table, task: TaskSource, cfg: HarvestConfig, benchmark_prompts: Iterable[str] = ()
) -> HarvestResult:
    """The whole harvest on an in-memory table (tests, small quarters); assets stream with Harvester."""
    h = Harvester(task, cfg, benchmark_prompts)
    out = h.process(traces)
    return HarvestResult(out, h.stats.as_counts(), dict(h.stats.pii))


def _split_of(problem_key: str, validation_fraction: float) -> str:
    bucket = int(hashlib.sha256(problem_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_fraction else "train"


def anchors_needed(positives: int, anchor_fraction: float, min_examples: int = 0) -> int:
    """Human anchors to add to `positives` synthetic rows: anchor_fraction of the total, or enough to reach
    min_examples when positives are scarce."""
    share = 0 if anchor_fraction == 0 else math.ceil(positives * anchor_fraction / (1 - anchor_fraction))
    return max(share, min_examples - positives)


def anchor_pool(positives: int, cfg: HarvestConfig) -> int:
    """Anchors to draw so that build_training_dataset has enough whatever the quarter's outcome: the share at
    `positives` (the most the quarter can yield) or the floor, plus the positives themselves when the mix is
    all human (`synthetic: false`), plus one spare."""
    needed = max(anchors_needed(positives, cfg.anchor_fraction), cfg.min_training_examples)
    return needed + (0 if cfg.synthetic else positives) + 1


@dataclass
class TrainingSet:
    table: pa.Table
    pairs: pa.Table
    prompts: pa.Table
    composition: dict[str, int | float]


class _Columns:
    """Rows gathered as one list a column (TRAINING_SCHEMA's), made a table at the end."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.columns: dict[str, list] = {name: [] for name in schema.names}

    def append(self, row: dict) -> None:
        for name, values in self.columns.items():
            values.append(row[name])

    def extend(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.append(row)

    def __len__(self) -> int:
        return len(self.columns[self.schema.names[0]])

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=self.schema)


class _PromptSample:
    """The prompts the training set draws on: every one up to `most`, beyond that the `most` with the smallest
    digests (a uniform sample). The threshold only falls, so a prompt in the sample was in it from its first
    trace on and holds all its traces; one left out never comes back. Each prompt's entry: its first row and
    place, samples, solved, first positive completion, positives (with their places) and negatives."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.prompts: dict[str, dict] = {}
        self._largest: list[tuple[int, str]] = []  # min-heap of (-digest, prompt): the largest digest on top

    def entry(self, prompt: str, row: dict, order: int) -> dict | None:
        seen = self.prompts.get(prompt)
        if seen is not None:
            return seen
        key = digest64(prompt)
        if len(self.prompts) >= self.most:
            if key >= -self._largest[0][0]:
                return None
            del self.prompts[heapq.heappop(self._largest)[1]]
        heapq.heappush(self._largest, (-key, prompt))
        seen = self.prompts[prompt] = {
            "row": row, "first": order, "solved": 0, "samples": 0, "trace": None, "positives": [], "negatives": [],
        }  # fmt: skip
        return seen


def build_training_dataset(
    harvested: pa.Table | Callable[[list[str]], Iterable[pa.RecordBatch]],
    anchors: list[Problem] | Callable[[int], list[Problem]],
    cfg: HarvestConfig,
    task: TaskSource,
    engine: InferenceEngine | None = None,  # needed only for the 'rephrase' strategy
    rephrase_tokens: int = 64,
    seed: int = 0,
) -> TrainingSet:
    """Positives (each reformatted by one strategy) plus human anchors at anchor_fraction; pairs of a
    positive and a negative of the same prompt; and the quarter's verifiable prompts with a solution for
    the on-policy methods.

    `harvested`: the harvested rows, or columns -> their batches (read twice: the negatives a pair needs are
    known once every positive is). `anchors`: a list, or size -> that many (called with anchor_pool of the
    positives taken). The train/validation split is by problem, so no problem's examples sit on both sides.
    """
    check_strategies(task, cfg.reformat)

    def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
        return harvested.select(columns).to_batches() if isinstance(harvested, pa.Table) else harvested(columns)

    columns = ["trace_id", "problem_id", "suite", "prompt", "completion", "reference_answer", "label"]
    labels: Counter = Counter()
    sample = _PromptSample(cfg.max_training_prompts)
    order = 0  # the place of each positive and negative in the harvested order
    for batch in batches(columns):
        for r in pa.Table.from_batches([batch]).to_pylist():
            labels[r["label"]] += 1
            if r["label"] not in ("positive", "negative"):
                continue
            seen = sample.entry(r["prompt"], r, order)
            order += 1
            if seen is None:
                continue
            seen["samples"] += 1
            if r["label"] == "positive":
                r["prompt"] = seen["row"]["prompt"]  # one string a prompt, however many traces hold it
                seen["solved"] += 1
                seen["trace"] = seen["trace"] or r["completion"]
                seen["positives"].append((order, r))
    # The negatives that pair: each prompt's first ones in the harvested order, as many as it has positives.
    paired = {prompt: seen for prompt, seen in sample.prompts.items() if seen["positives"]}
    if paired and labels["negative"]:
        wanted = pa.array(list(paired), pa.string())
        for batch in batches(["prompt", "completion", "trace_id", "label"]):
            hit = pc.and_(pc.equal(batch.column(3), "negative"), pc.is_in(batch.column(0), value_set=wanted))
            negatives = batch.filter(hit)
            texts, traces = negatives.column(1).to_pylist(), negatives.column(2).to_pylist()
            for prompt, completion, trace in zip(negatives.column(0).to_pylist(), texts, traces, strict=True):
                seen = paired[prompt]
                if len(seen["negatives"]) < len(seen["positives"]):
                    seen["negatives"].append({"completion": completion, "trace_id": trace})
    problems = dict(sorted(sample.prompts.items(), key=lambda item: item[1]["first"]))
    positives = [r for _, r in sorted(pr for seen in problems.values() for pr in seen["positives"])]
    negatives = {prompt: seen["negatives"] for prompt, seen in problems.items()}
    if not positives and cfg.min_training_examples == 0:
        raise ValueError(
            f"no verified positive traces to distill from ({sum(labels.values())} harvested traces: "
            f"{dict(sorted(labels.items()))}); the deployed model solved none of this quarter's problems"
        )
    if callable(anchors):
        anchors = anchors(anchor_pool(len(positives), cfg))
    n_anchor = anchors_needed(len(positives), cfg.anchor_fraction, cfg.min_training_examples)
    if not cfg.synthetic:  # the anchors-only control: as many examples as the mix, all of them human
        n_anchor, positives = len(positives) + n_anchor, []
    if n_anchor > len(anchors):
        raise ValueError(
            f"harvest needs {n_anchor} anchor examples for anchor_fraction={cfg.anchor_fraction}, got {len(anchors)}"
        )
    strategies = [pick(r["trace_id"], cfg.reformat) for r in positives]
    reformat_counts: Counter = Counter()
    to_rephrase = [r for r, s in zip(positives, strategies, strict=True) if s == "rephrase"]
    if to_rephrase and engine is None:
        raise ValueError("harvest.reformat gives weight to 'rephrase', which needs an inference engine")
    rephrased = iter(rephrase(task, engine, to_rephrase, rephrase_tokens, seed, reformat_counts))
    # Text that did not pass the harvest's redaction goes through it here, counted by where it came from: human
    # data (GSM8K's "Mrs. Snyder" is a titled name like any other), the deployed model's rephrasings (it can
    # write what it memorised) and the reference answers the on-policy prompts carry (a client's metadata).
    found_pii: dict[str, Counter] = defaultdict(Counter)

    def redacted(text: str, origin: str = "human") -> str:
        out, kinds = pii.redact(text, cfg.redact_names)
        found_pii[origin].update(kinds)
        return out

    rows = _Columns(TRAINING_SCHEMA)  # column by column: a dict a row is most of the step's memory
    for r, strategy in zip(positives, strategies, strict=True):
        completion = (
            redacted(next(rephrased), "rephrased")
            if strategy == "rephrase"
            else template(strategy, task, r["prompt"], r["completion"])
        )
        reformat_counts[strategy] += 1
        rows.append(
            {
                "example_id": f"trace/{r['trace_id']}",
                "prompt": r["prompt"],
                "completion": completion,
                "origin": "synthetic",
                "split": _split_of(r["problem_id"] or r["prompt"], cfg.validation_fraction),
                "trace_id": r["trace_id"],
                "problem_id": r["problem_id"],
                "suite": r["suite"],
                "strategy": strategy,
            }
        )
    rows.extend(
        {
            "example_id": f"human/{p.problem_id}",
            "prompt": redacted(p.prompt),
            "completion": redacted(p.solution),
            "origin": "human",
            "split": _split_of(p.problem_id, cfg.validation_fraction),
            "trace_id": None,
            "problem_id": p.problem_id,
            "suite": p.suite,
            "strategy": None,
        }
        for p in anchors[:n_anchor]
    )
    pairs = []
    used: Counter = Counter()
    for r in positives:
        pool = negatives.get(r["prompt"])
        if pool and used[r["prompt"]] < len(pool):
            neg = pool[used[r["prompt"]]]
            used[r["prompt"]] += 1
            pairs.append(
                {
                    "prompt": r["prompt"],
                    "chosen": r["completion"],
                    "rejected": neg["completion"],
                    "problem_id": r["problem_id"],
                    "chosen_trace_id": r["trace_id"],
                    "rejected_trace_id": neg["trace_id"],
                    "split": _split_of(r["problem_id"] or r["prompt"], cfg.validation_fraction),
                }
            )
    prompts = []
    composition_skipped: Counter = Counter()
    placeholder = re.compile("<(?:" + "|".join(pii.PII_TYPES) + ")>")
    for prompt, seen in problems.items():
        r = seen["row"]
        looked_up = task.lookup(prompt)
        reference = None if r["reference_answer"] is None else redacted(r["reference_answer"], "reference")
        if reference is not None and placeholder.search(reference):
            # The reference held PII (redacted by the harvest, or here): a reward against "<SSN>" is never
            # earned and an answer_only solution would teach the placeholder, so the prompt trains no on-policy
            # method (its traces still train as examples), counted.
            composition_skipped["prompts_reference_redacted"] += 1
            continue
        if seen["trace"] is not None:
            solution, source = seen["trace"], "trace"
        elif looked_up is not None and looked_up.reference == r["reference_answer"]:
            solution, source = redacted(looked_up.solution), "task"
        else:
            solution, source = task.render(looked_up, "", reference).strip(), "answer_only"
        prompts.append(
            {
                "prompt": prompt,
                "reference": reference,
                "solution": solution,
                "solution_source": source,
                "problem_id": r["problem_id"],
                "suite": r["suite"],
                "solved": seen["solved"],
                "samples": seen["samples"],
                "split": _split_of(r["problem_id"] or prompt, cfg.validation_fraction),
            }
        )
    composition: dict[str, int | float] = defaultdict(int, composition_skipped)
    for origin, split in zip(rows.columns["origin"], rows.columns["split"], strict=True):
        composition[f"{origin}_{split}"] += 1
    composition["synthetic"] = len(positives)
    composition["human"] = n_anchor
    composition["synthetic_fraction"] = round(len(positives) / max(len(rows), 1), 4)
    composition["pairs"] = len(pairs)
    composition["prompts"] = len(prompts)
    composition["prompts_unsolved"] = sum(1 for p in prompts if p["solved"] == 0)
    # Past max_training_prompts: the positive and negative traces of the prompts left out of the sample.
    composition["traces_not_sampled"] = (
        labels["positive"] + labels["negative"] - sum(seen["samples"] for seen in problems.values())
    )
    for k, v in sorted(reformat_counts.items()):
        composition[f"strategy/{k}"] = v
    for origin, found in sorted(found_pii.items()):
        for k, v in sorted(found.items()):
            composition[f"{origin}_pii_redacted/{k}"] = v
    return TrainingSet(
        rows.table(),
        pa.Table.from_pylist(pairs, schema=PAIRS_SCHEMA),
        pa.Table.from_pylist(prompts, schema=PROMPTS_SCHEMA),
        dict(composition),
    )
