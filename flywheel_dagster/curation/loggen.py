"""Realistic production logs for tests and benchmarks: chat-completions records as a gateway writes them.

`record` builds one record; `synthetic_records` makes many from a task's problems without a model
(correct or corrupted solutions, both reasoning styles, PII sprinkled into user turns, repeat askers,
benchmark questions); `write_jsonl` writes them, optionally with a share of broken lines of every kind
the ingest quarantines.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from flywheel_dagster.tasks.base import Problem, TaskSource

PII_SNIPPETS = [
    "my email is jane.doe@example.com",
    "call me at (415) 555-0132",
    "I am Laura Chen",
    "card 4111 1111 1111 1111",
    "from 192.168.10.24",
]


def record(
    question: str,
    content: str,
    *,
    timestamp: datetime,
    reasoning: str | None = None,
    inline_think: bool = False,
    user_id: str | None = None,
    workload_id: str = "math-tutor",
    request_id: str | None = None,
    model: str = "flywheel-champion",
    model_version: str | None = None,
    reference: str | None = None,
    finish_reason: str = "stop",
    system: str | None = None,
) -> dict:
    """One chat-completions log record; the reasoning goes to reasoning_content or inline <think>."""
    message: dict = {"role": "assistant", "content": content}
    if reasoning is not None:
        if inline_think:
            message["content"] = f"<think>{reasoning}</think>{content}"
        else:
            message["reasoning_content"] = reasoning
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    out = {
        "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        "request_id": request_id,
        "workload_id": workload_id,
        "user_id": user_id,
        "request": {"model": model, "messages": messages, "temperature": 1.0},
        "response": {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"completion_tokens": len(content.split()) + len((reasoning or "").split())},
        },
    }
    metadata = {k: v for k, v in (("reference_answer", reference), ("model_version", model_version)) if v}
    if metadata:
        out["metadata"] = metadata
    return out


def _split(task: TaskSource, completion: str) -> tuple[str | None, str]:
    """(reasoning, content) as a reasoning parser would split a completion."""
    parsed = task.parse(completion)
    if parsed.answer is None:
        return None, completion
    at = completion.find(parsed.reasoning)
    return parsed.reasoning, completion[at + len(parsed.reasoning) :].strip()


def _corrupt(solution: str, rng: random.Random) -> str:
    digits = [i for i, c in enumerate(solution) if "0" <= c <= "9"]  # not isdigit(): "³" is a digit to it
    i = rng.choice(digits)
    return solution[:i] + str((int(solution[i]) + rng.randint(1, 9)) % 10) + solution[i + 1 :]


def synthetic_records(
    task: TaskSource,
    problems: list[Problem],
    n: int,
    start: datetime,
    end: datetime,
    seed: int = 0,
    wrong_rate: float = 0.4,
    pii_rate: float = 0.02,
    users: int = 5000,
) -> Iterator[dict]:
    """n records over [start, end): questions drawn from `problems`, answered correctly or not."""
    rng = random.Random(seed)
    span = (end - start).total_seconds()
    prefix, _, suffix = task.prompt_for("{}").partition("{}")  # the user's question, as typed
    for i in range(n):
        p = problems[rng.randrange(len(problems))]
        completion = _corrupt(p.solution, rng) if rng.random() < wrong_rate else p.solution
        reasoning, content = _split(task, completion)
        question = p.prompt.strip() if p.prompt.startswith("Q:") else p.prompt.removeprefix(prefix).removesuffix(suffix)
        if rng.random() < pii_rate:
            question = f"{rng.choice(PII_SNIPPETS)}. {question}"
        style = rng.random()
        yield record(
            question,
            content if style < 0.8 else completion,
            reasoning=reasoning if style < 0.8 else None,
            inline_think=style < 0.4,
            timestamp=start + timedelta(seconds=rng.random() * span),
            user_id=f"u-{rng.randrange(users)}",
            request_id=f"req-{seed}-{i}",
        )


BROKEN_LINES = {
    "bad_json": b'{"timestamp": "2026-01-02T00:00:00Z", "request": {',
    "invalid_utf8": b'{"timestamp": "2026-01-02T00:00:00Z", "note": "\xff\xfe"}',
    "not_an_object": b"[1, 2, 3]",
    "missing_field": b'{"timestamp": "2026-01-02T00:00:00Z", "response": {"choices": []}}',
    "wrong_type": b'{"timestamp": "2026-01-02T00:00:00Z", "request": {"messages": "hi"}, "response": {"choices": []}}',
    "bad_timestamp": b'{"timestamp": "yesterday", "request": {}, "response": {}}',
    "no_user_message": (
        b'{"timestamp": "2026-01-02T00:00:00Z", "request": {"messages": [{"role": "system", "content": "x"}]}, '
        b'"response": {"choices": [{"message": {"content": "1"}}]}}'
    ),
    "empty_completion": (
        b'{"timestamp": "2026-01-02T00:00:00Z", "request": {"messages": [{"role": "user", "content": "Q:1+2"}]}, '
        b'"response": {"choices": [{"message": {"content": "  "}}]}}'
    ),
}


def write_jsonl(path: str | Path, records: Iterable[dict], broken_every: int = 0, oversized_bytes: int = 0) -> int:
    """Write records as JSON Lines; every `broken_every`-th line is a broken one (cycling through
    BROKEN_LINES, plus an oversized line when oversized_bytes > 0). Returns the lines written."""
    broken = list(BROKEN_LINES.values())
    if oversized_bytes:
        broken.append(b'{"pad": "' + b"x" * oversized_bytes + b'"}')
    lines = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for i, r in enumerate(records):
            if broken_every and i % broken_every == broken_every - 1:
                f.write(broken[(i // broken_every) % len(broken)] + b"\n")
                lines += 1
            f.write(orjson.dumps(r) + b"\n")
            lines += 1
    return lines
