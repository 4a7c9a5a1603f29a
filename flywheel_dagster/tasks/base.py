"""Problems, verdicts and the task-source interface shared by every source of problems."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer; `solution` is a human-style worked solution."""

    problem_id: str
    suite: str
    prompt: str
    reference: str
    solution: str


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one completion."""

    correct: bool
    answer: str | None
    reason: str


@dataclass(frozen=True)
class ParsedCompletion:
    reasoning: str
    answer: str | None


class TaskSource(Protocol):
    """Where problems come from and how a completion is judged."""

    name: str
    verifier_name: str

    def suites(self) -> list[str]:
        """Benchmark suites (difficulty levels) this source evaluates on."""
        ...

    def traffic(self, cycle_index: int, n: int) -> list[Problem]:
        """The quarter's simulated production questions (mixed difficulty), deterministic per cycle."""
        ...

    def benchmark(self, problems_per_suite: int, seed: int) -> list[Problem]:
        """A fixed held-out benchmark, disjoint from traffic and anchors."""
        ...

    def anchors(self, n: int, seed: int) -> list[Problem]:
        """Human-origin worked examples used to bootstrap and to anchor each cycle's training."""
        ...

    def parse(self, completion: str) -> ParsedCompletion:
        """Split a completion into reasoning and final answer."""
        ...

    def verify(self, completion: str, reference: str) -> Verdict:
        """Judge a completion against the reference answer."""
        ...

    def render(self, problem: Problem, reasoning: str, answer: str) -> str:
        """The completion text for a reasoning and an answer (the training target format)."""
        ...

    def lookup(self, question: str) -> Problem | None:
        """The known problem a user's question is (with its reference answer), or None."""
        ...

    def prompt_for(self, question: str) -> str:
        """The model prompt for a user's question, in this task's prompt format."""
        ...

    def format_violation(self, prompt: str, completion: str) -> str | None:
        """Why a prompt/completion pair does not fit the task's training format, or None when it does."""
        ...

    reformat_strategies: tuple[str, ...]
    """Harvest reformatting strategies that keep this task's completions verifiable."""

    teacher_template: str
    """The on-policy self-distillation teacher's prompt: `{prompt}` and `{privileged_context}` (the solution)."""


def generated_benchmark(
    suites: list[str], per_suite: int, stream: str, make: Callable[[str, random.Random], Problem]
) -> list[Problem]:
    """`per_suite` distinct generated problems a suite, one random stream per suite (`{stream}-{suite}`): a
    smaller benchmark is a prefix of a larger one, so the held-out set excluded from traffic and anchors covers
    every size up to the configured one."""
    out: list[Problem] = []
    for suite in suites:
        rng = random.Random(f"{stream}-{suite}")
        seen: set[str] = set()
        while len(seen) < per_suite:
            p = make(suite, rng)
            if p.problem_id not in seen:
                seen.add(p.problem_id)
                out.append(p)
    return out


def draw_held_out(
    suites: list[str], n: int, rng: random.Random, make: Callable[[str, random.Random], Problem], held_out: set[str]
) -> list[Problem]:
    """`n` generated problems, the suites in turn, none of them in `held_out`."""
    out: list[Problem] = []
    while len(out) < n:
        p = make(suites[len(out) % len(suites)], rng)
        if p.problem_id not in held_out:
            out.append(p)
    return out


def chatml_format_violation(prompt: str, completion: str) -> str | None:
    """Why a ChatML prompt/completion pair does not fit training, or None: chat-template tokens inside the
    completion (a closing <|im_end|> is fine), or an empty prompt."""
    if "<|im_start|>" in completion or "<|im_end|>" in completion.rstrip().removesuffix("<|im_end|>"):
        return "completion contains chat-template tokens"
    if not prompt.strip():
        return "empty prompt"
    return None


def verifier_id(task: TaskSource) -> str:
    """The verifier with its version, where a task's verdicts come from a package (`verifier_version`): what a
    cached benchmark evaluation is keyed by, so one made by another math-verify is not compared with today's."""
    version = getattr(task, "verifier_version", None)
    return f"{task.verifier_name}-{version}" if version else task.verifier_name
