"""Minimal harvest: verifier labels, exact dedup, positives for training, negatives kept, anchors mixed in.

Every trace read ends in exactly one label, and every trace kept out of training has a counted reason:
read = positive + negative + unverifiable + duplicate + over_cap.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from flywheel_dagster.tasks.base import Problem, TaskSource
from flywheel_dagster.traces.schema import HARVESTED_SCHEMA, TRAINING_SCHEMA

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Text as compared by exact dedup: case-folded, whitespace collapsed."""
    return _SPACE.sub(" ", text.casefold()).strip()


def verify_traces(traces: pa.Table, task: TaskSource) -> pa.Table:
    """Fill correct/verifier/verdict/answer for every trace; traces without a reference stay unverifiable."""
    rows = traces.to_pylist()
    for row in rows:
        if row["reference_answer"] is None:
            row.update(correct=None, verifier=task.verifier_name, verdict="no_reference")
            continue
        v = task.verify(row["completion"], row["reference_answer"])
        row.update(correct=v.correct, verifier=task.verifier_name, verdict=v.reason, answer=v.answer)
    return pa.Table.from_pylist(rows, schema=traces.schema)


@dataclass
class HarvestResult:
    harvested: pa.Table
    counts: dict[str, int] = field(default_factory=dict)


def harvest(traces: pa.Table, task: TaskSource, max_positives_per_problem: int) -> HarvestResult:
    """Label verified traces positive/negative, drop exact duplicates and positives past the per-problem cap."""
    verified = verify_traces(traces, task)
    rows = verified.to_pylist()
    seen: set[tuple[str, str]] = set()
    per_problem: Counter[str] = Counter()
    counts: Counter[str] = Counter(read=len(rows))
    for row in rows:
        key = (normalize(row["prompt"]), normalize(row["completion"]))
        if key in seen:
            row.update(label="duplicate", drop_reason="exact_duplicate")
        elif row["correct"] is None:
            row.update(label="unverifiable", drop_reason="no_reference_answer")
        elif not row["correct"]:
            row.update(label="negative", drop_reason=None)
        elif per_problem[row["prompt"]] >= max_positives_per_problem:
            row.update(label="over_cap", drop_reason="positives_per_problem_cap")
        else:
            per_problem[row["prompt"]] += 1
            row.update(label="positive", drop_reason=None)
        seen.add(key)
        counts[row["label"]] += 1
    for label in ("positive", "negative", "unverifiable", "duplicate", "over_cap"):
        counts.setdefault(label, 0)
    return HarvestResult(pa.Table.from_pylist(rows, schema=HARVESTED_SCHEMA), dict(counts))


def _split_of(problem_key: str, validation_fraction: float) -> str:
    bucket = int(hashlib.sha256(problem_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_fraction else "train"


def anchors_needed(positives: int, anchor_fraction: float, min_examples: int = 0) -> int:
    """Human anchors to add to `positives` synthetic rows: anchor_fraction of the total, or enough to reach
    min_examples when positives are scarce."""
    share = 0 if anchor_fraction == 0 else math.ceil(positives * anchor_fraction / (1 - anchor_fraction))
    return max(share, min_examples - positives)


def build_training_dataset(
    harvested: pa.Table,
    anchors: list[Problem],
    anchor_fraction: float,
    validation_fraction: float,
    min_examples: int = 0,
) -> tuple[pa.Table, dict[str, int]]:
    """Positives as prompt/completion pairs, plus human anchors so they make up anchor_fraction of the rows
    (or fill the set up to min_examples when positives are scarce).

    The train/validation split is by problem, so no problem's examples sit on both sides.
    """
    positives = [r for r in harvested.to_pylist() if r["label"] == "positive"]
    if not positives and min_examples == 0:
        labels = dict(sorted(Counter(harvested.column("label").to_pylist()).items()))
        raise ValueError(
            f"no verified positive traces to distill from ({harvested.num_rows} harvested traces: {labels}); "
            "the deployed model solved none of this quarter's problems"
        )
    n_anchor = anchors_needed(len(positives), anchor_fraction, min_examples)
    if n_anchor > len(anchors):
        raise ValueError(
            f"harvest needs {n_anchor} anchor examples for anchor_fraction={anchor_fraction}, got {len(anchors)}"
        )
    rows = [
        {
            "example_id": f"trace/{r['trace_id']}",
            "prompt": r["prompt"],
            "completion": r["completion"],
            "origin": "synthetic",
            "split": _split_of(r["problem_id"] or r["prompt"], validation_fraction),
            "trace_id": r["trace_id"],
            "problem_id": r["problem_id"],
            "suite": r["suite"],
        }
        for r in positives
    ]
    rows += [
        {
            "example_id": f"human/{p.problem_id}",
            "prompt": p.prompt,
            "completion": p.solution,
            "origin": "human",
            "split": _split_of(p.problem_id, validation_fraction),
            "trace_id": None,
            "problem_id": p.problem_id,
            "suite": p.suite,
        }
        for p in anchors[:n_anchor]
    ]
    composition: dict[str, int] = defaultdict(int)
    for r in rows:
        composition[f"{r['origin']}_{r['split']}"] += 1
    composition["synthetic"] = len(positives)
    composition["human"] = n_anchor
    return pa.Table.from_pylist(rows, schema=TRAINING_SCHEMA), dict(composition)
