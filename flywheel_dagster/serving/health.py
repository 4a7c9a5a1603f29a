"""The health check a staged model passes before traffic moves to it: greedy answers to verified prompts, sent
straight to its server (never through the capture: they are benchmark problems, not training data)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

from flywheel_dagster.config import HealthCheckConfig
from flywheel_dagster.serving.upstream import VllmServer
from flywheel_dagster.tasks.base import TaskSource

# serving.health_check.min_accuracy's default: the share a deploy request that names no min_correct needs.
DEFAULT_MIN_ACCURACY: float = HealthCheckConfig.model_fields["min_accuracy"].default


def default_min_correct(prompts: int) -> int:
    """How many of `prompts` verified prompts must be answered right when the deploy request does not say."""
    return math.ceil(DEFAULT_MIN_ACCURACY * prompts)


@dataclass
class HealthResult:
    ok: bool
    correct: int
    total: int
    needed: int
    reason: str
    answers: list[dict]


def health_check(
    task: TaskSource,
    server: VllmServer,
    model: str,
    prompts: list[dict],
    min_correct: int,
    max_tokens: int,
) -> HealthResult:
    """Greedy answers to verified prompts ({question, reference}) straight from a server; ok if every request
    succeeded and at least min_correct answers verify."""
    answers, correct = [], 0
    target_url = server.url
    with httpx.Client(timeout=120, headers=server.headers) as client:
        for p in prompts:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": p["question"]}],
                "temperature": 0.0,
                "max_tokens": max_tokens,
            }
            try:
                r = client.post(f"{target_url}/v1/chat/completions", json=body)
            except httpx.HTTPError as err:
                return HealthResult(False, correct, len(prompts), min_correct, f"request failed: {err}", answers)
            if r.status_code != 200:
                return HealthResult(
                    False, correct, len(prompts), min_correct, f"HTTP {r.status_code}: {r.text[:200]}", answers
                )
            text = r.json()["choices"][0]["message"].get("content") or ""
            verdict = task.verify(text, p["reference"])
            correct += verdict.correct
            answers.append(
                {
                    "question": p["question"],
                    "reference": p["reference"],
                    "answer": verdict.answer,
                    "correct": verdict.correct,
                }
            )
    ok = correct >= min_correct
    reason = f"{correct}/{len(prompts)} verified prompts answered correctly (needed {min_correct})"
    return HealthResult(ok, correct, len(prompts), min_correct, reason, answers)
