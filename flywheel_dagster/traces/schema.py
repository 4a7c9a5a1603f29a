"""The reasoning-trace record: one sampled answer with its reasoning, as a pyarrow schema."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

CONTEXT_PII = "context_pii"
TRACE_SCHEMA = pa.schema(
    [
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("cycle", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "simulated" traffic or "production" logs
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("problem_id", pa.string()),
        pa.field("suite", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("reasoning", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("reference_answer", pa.string()),
        pa.field("correct", pa.bool_()),
        pa.field("verifier", pa.string()),
        pa.field("verdict", pa.string()),
        pa.field("tokens", pa.int32(), nullable=False),
        pa.field("mean_logprob", pa.float32()),
        pa.field("finish_reason", pa.string()),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # Production logs only: who asked, through which workload, in which request. Kept for erasure
        # requests and audits; never part of any training text.
        pa.field("workload_id", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("request_id", pa.string()),
        # Production logs only: the PII that the request's turns outside the trace name (a system prompt, earlier
        # turns, tool calls), as the detectors read it: a JSON list of [type, value] pairs (context_pii_pairs),
        # null when they name none. Their text is not kept. The harvest redacts each value wherever the trace
        # repeats it without the cue that found it. Never training text; not in HARVESTED_SCHEMA.
        pa.field(CONTEXT_PII, pa.string()),
    ]
)

# The harvested table: the trace's columns but context_pii, and what the harvest decided about each trace.
# label: positive | negative | unverifiable | dropped; drop_reason says why a trace is not used.
# Prompt, completion, reasoning and answer are PII-redacted here; pii_types lists what was replaced.
HARVESTED_SCHEMA = (
    pa.schema([f for f in TRACE_SCHEMA if f.name != CONTEXT_PII])
    .append(pa.field("label", pa.string(), nullable=False))
    .append(pa.field("drop_reason", pa.string()))
    .append(pa.field("pii_types", pa.string()))
)


def context_pii_value(pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str | None:
    """The context_pii cell of (type, value) pairs: a JSON list, None for none."""
    return json.dumps([list(p) for p in pairs], ensure_ascii=False) if pairs else None


def context_pii_pairs(cell: object) -> list[tuple[str, str]] | None:
    """The (type, value) pairs of a context_pii cell; [] for a null one, None for one that is not a JSON list of
    [type, value] pairs of strings, the value not blank (what the ingest quarantines in a Parquet input, and the
    harvest reads as none)."""
    if cell is None:
        return []
    if not isinstance(cell, str):
        return None
    try:
        pairs = json.loads(cell)
    except (ValueError, RecursionError):
        return None
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str) and p[1].strip()
        for p in pairs
    ):
        return None
    return [(kind, value) for kind, value in pairs]


# The training dataset: prompt/completion pairs with their origin.
TRAINING_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),  # "synthetic" (verified trace) or "human" (anchor)
        pa.field("split", pa.string(), nullable=False),  # "train" or "validation"
        pa.field("trace_id", pa.string()),
        pa.field("problem_id", pa.string()),
        pa.field("suite", pa.string()),
        pa.field("strategy", pa.string()),  # how a trace was reformatted ("as_is", "concise", ...); null: human
    ]
)

# Positive and negative traces of the same prompt, for preference-style objectives (REDI, DPO).
PAIRS_FILE = "pairs.parquet"
PROMPTS_FILE = "prompts.parquet"

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("problem_id", pa.string()),
        pa.field("chosen_trace_id", pa.string(), nullable=False),
        pa.field("rejected_trace_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)


def trace_id(cycle: str, model_version: str, problem_id: str, prompt: str, sample_index: int) -> str:
    """Deterministic id: a rerun of the same cycle produces the same ids, so nothing is counted twice."""
    key = f"{cycle}\x1f{model_version}\x1f{problem_id}\x1f{prompt}\x1f{sample_index}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


# The quarter's verifiable problems, for the on-policy methods (opsd, grpo): the model samples its own answers
# to these prompts. `solution` is the teacher's privileged information: a verified trace of this quarter, the
# task's reference solution, or only the final answer. `solved` / `samples`: verified / all of the prompt's
# harvested traces (after deduplication, so exact repeats of one answer count once).
PROMPTS_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=False),
        pa.field("solution", pa.string(), nullable=False),
        pa.field("solution_source", pa.string(), nullable=False),  # trace | task | answer_only
        pa.field("problem_id", pa.string()),
        pa.field("suite", pa.string()),
        pa.field("solved", pa.int32(), nullable=False),
        pa.field("samples", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
