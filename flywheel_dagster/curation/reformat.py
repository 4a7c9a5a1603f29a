"""Reformatting strategies for positive traces, mixed in one dataset by config weights.

- as_is: the trace as generated.
- concise: only the reasoning lines that compute something (a digit or '='), then the answer.
- qa: the question with its final answer only.
- steps: the reasoning as a numbered step list.
- rephrase: model-based; the engine is asked for a new solution and the result is kept only when the
  task's verifier accepts it (otherwise the trace is kept as is, counted as `rephrase_rejected`).

A task lists the strategies that keep its completions in its own format (`task.reformat_strategies`):
the playground's character-level model has no alphabet for prose, so it takes as_is and rephrase only.
Each positive gets one strategy, picked by a hash of its trace id, so a rerun picks the same.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from flywheel_dagster.engines.base import SamplingSettings
from flywheel_dagster.tasks.base import Problem, TaskSource

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
REPHRASE_INSTRUCTION = (
    "Rewrite the following worked solution more clearly, keeping every calculation, and end with the final "
    "answer line.\n\nSolution:\n{solution}\n\nRewritten solution:\n"
)


def check_strategies(task: TaskSource, weights: dict[str, float]) -> None:
    bad = sorted(k for k, w in weights.items() if w > 0 and k not in task.reformat_strategies)
    if bad:
        raise ValueError(
            f"harvest.reformat: task {task.name!r} cannot use strategies {bad}; "
            f"it supports {list(task.reformat_strategies)}"
        )


def pick(trace_id: str, weights: dict[str, float]) -> str:
    """A strategy for this trace, with probability proportional to its weight, deterministic per trace."""
    items = sorted((k, w) for k, w in weights.items() if w > 0)
    total = sum(w for _, w in items)
    u = int(hashlib.sha256(trace_id.encode()).hexdigest()[:12], 16) / float(1 << 48) * total
    for k, w in items:
        u -= w
        if u < 0:
            return k
    return items[-1][0]


def _sentences(reasoning: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(reasoning) if s.strip()]


def template(strategy: str, task: TaskSource, prompt: str, completion: str) -> str:
    """The completion rewritten by a template strategy."""
    if strategy == "as_is":
        return completion
    parsed = task.parse(completion)
    if parsed.answer is None:
        return completion
    problem = Problem(problem_id="", suite="", prompt=prompt, reference=parsed.answer, solution=completion)
    sentences = _sentences(parsed.reasoning)
    if strategy == "concise":
        kept = [s for s in sentences if any(c.isdigit() for c in s) or "=" in s] or sentences
        return task.render(problem, " ".join(kept), parsed.answer)
    if strategy == "qa":
        return task.render(problem, f"The answer is {parsed.answer}.", parsed.answer)
    if strategy == "steps":
        return task.render(problem, "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1)), parsed.answer)
    raise ValueError(f"unknown template strategy {strategy!r}")


def rephrase(
    task: TaskSource,
    engine,
    rows: list[dict],
    max_new_tokens: int,
    seed: int,
    counts: Counter,
) -> list[str]:
    """Model-based rephrasing of rows (prompt, completion, reference_answer); verified, else kept as is."""
    if not rows:
        return []
    if task.name == "playground":
        # A character-level arithmetic model reads no instructions: its rephrasing is a fresh solution.
        requests = [r["prompt"] for r in rows]
    else:
        requests = [r["prompt"] + REPHRASE_INSTRUCTION.format(solution=r["completion"]) for r in rows]
    settings = SamplingSettings(n=1, temperature=0.7, max_new_tokens=max_new_tokens, seed=seed)
    out = [r["completion"] for r in rows]
    for c in engine.generate(requests, settings):
        row = rows[c.prompt_index]
        if row["reference_answer"] is not None and task.verify(c.text, row["reference_answer"]).correct:
            out[c.prompt_index] = c.text
            counts["rephrased"] += 1
        else:
            counts["rephrase_rejected"] += 1
    return out
