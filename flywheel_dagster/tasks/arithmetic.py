"""Arithmetic asked in words, for a pretrained chat model: "What is 47 plus 85?" with a '#### <number>' answer.

The playground's arithmetic, put the way a user would ask it, so that a small pretrained model (SmolLM2-135M)
starts out partly right: at greedy decoding it solves about 4 in 10 two-digit sums and about 1 in 15 products
of two two-digit numbers. Answers are checked exactly (the number after '####', else after "the answer is",
else the last number). Problems are generated, so the held-out benchmark is as large as it needs to be for a
confidence interval that can tell a two-point gain from zero.

Suites run from partly solved to rarely solved. The human-written anchors work each problem out the way a
person would write it down (a product of two two-digit numbers is split at the tens).
"""

from __future__ import annotations

import random
import re

from flywheel_dagster.tasks.base import (
    ParsedCompletion,
    Problem,
    Verdict,
    chatml_format_violation,
    draw_held_out,
    generated_benchmark,
)

SUITES = ["add_2d", "sub_2d", "mul_1d", "add_3d", "sub_3d", "mul_2d"]
INSTRUCTION = "Give the final answer on its own line as '#### <number>'."
PROMPT = "<|im_start|>user\nWhat is {a} {word} {b}?\n" + INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n"
TEACHER_TEMPLATE = (
    "<|im_start|>system\nA worked solution to the user's question, for reference:\n{privileged_context}"
    "<|im_end|>\n{prompt}"
)
_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_OPS = {"plus": "+", "minus": "-", "times": "*", "+": "+", "-": "-", "*": "*", "x": "*", "×": "*"}
# suite -> (range of the first operand, range of the second); subtraction keeps the second at most the first.
_RANGES = {
    "add_2d": ((10, 99), (10, 99)),
    "sub_2d": ((20, 99), (10, 99)),
    "mul_1d": ((10, 99), (2, 9)),
    "add_3d": ((100, 999), (100, 999)),
    "sub_3d": ((200, 999), (100, 999)),
    "mul_2d": ((11, 99), (11, 99)),
}
_QUESTION = re.compile(
    r"^\s*(?:what\s+is\s+)?(\d{1,6})\s*(plus|minus|times|[+\-*x×])\s*(\d{1,6})\s*\??\s*$", re.IGNORECASE
)
_HASHES = re.compile(r"####\s*(-?[\d,]*\d)")
_THE_ANSWER = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\d)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*")


def worked_solution(a: int, op: str, b: int) -> str:
    """How a person writes the problem out; a product of two-digit numbers is split at the tens."""
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    if op == "*" and b >= 10 and b % 10:
        tens, ones = b - b % 10, b % 10
        work = f"{a} * {b} = {a} * {tens} + {a} * {ones} = {a * tens} + {a * ones} = {result}"
    else:
        work = f"{a} {op} {b} = {result}"
    return f"{work}\n#### {result}"


def make_problem(suite: str, a: int, op: str, b: int) -> Problem:
    return Problem(
        problem_id=f"{suite}/{a}{op}{b}",
        suite=suite,
        prompt=PROMPT.format(a=a, word=_WORDS[op], b=b),
        reference=str({"+": a + b, "-": a - b, "*": a * b}[op]),
        solution=worked_solution(a, op, b),
    )


def classify(a: int, op: str, b: int) -> str | None:
    """The suite a question belongs to, or None when it is outside every suite's shape."""
    for suite, ((a_lo, a_hi), (b_lo, b_hi)) in _RANGES.items():
        if suite[:3] == {"+": "add", "-": "sub", "*": "mul"}[op] and a_lo <= a <= a_hi and b_lo <= b <= b_hi:
            if op != "-" or b <= a:
                return suite
    return None


def random_problem(suite: str, rng: random.Random) -> Problem:
    if suite not in _RANGES:
        raise ValueError(f"unknown arithmetic suite {suite!r}; expected one of {SUITES}")
    (a_lo, a_hi), (b_lo, b_hi) = _RANGES[suite]
    op = {"add": "+", "sub": "-", "mul": "*"}[suite[:3]]
    a = rng.randint(a_lo, a_hi)
    b = rng.randint(b_lo, min(a, b_hi)) if op == "-" else rng.randint(b_lo, b_hi)
    return make_problem(suite, a, op, b)


class ArithmeticTask:
    """Arithmetic in words at six difficulty levels, for chat models; exact answer check."""

    name = "arithmetic"
    verifier_name = "arithmetic-exact-v1"
    teacher_template = TEACHER_TEMPLATE
    reformat_strategies = ("as_is", "concise", "qa", "steps", "rephrase")

    def __init__(self, seed: int = 0, benchmark_seed: int = 20240101, benchmark_size: int = 150) -> None:
        self.seed = seed
        self._held_out = {p.problem_id for p in self.benchmark(benchmark_size, benchmark_seed)}

    def suites(self) -> list[str]:
        return list(SUITES)

    def benchmark(self, problems_per_suite: int, seed: int) -> list[Problem]:
        return generated_benchmark(SUITES, problems_per_suite, f"arithmetic-benchmark-{seed}", random_problem)

    def _draw(self, n: int, rng: random.Random) -> list[Problem]:
        return draw_held_out(SUITES, n, rng, random_problem, self._held_out)

    def traffic(self, cycle_index: int, n: int) -> list[Problem]:
        return self._draw(n, random.Random(f"arithmetic-traffic-{self.seed}-{cycle_index}"))

    def anchors(self, n: int, seed: int) -> list[Problem]:
        return self._draw(n, random.Random(f"arithmetic-anchors-{self.seed}-{seed}"))

    def parse(self, completion: str) -> ParsedCompletion:
        for pattern in (_HASHES, _THE_ANSWER):
            m = pattern.search(completion)
            if m:
                return ParsedCompletion(completion[: m.start()].strip(), m.group(1).replace(",", ""))
        numbers = _NUMBER.findall(completion)
        if numbers:
            return ParsedCompletion(completion.strip(), numbers[-1].replace(",", ""))
        return ParsedCompletion(completion.strip(), None)

    def verify(self, completion: str, reference: str) -> Verdict:
        parsed = self.parse(completion)
        if parsed.answer is None:
            return Verdict(False, None, "no_final_answer")
        try:
            ok = int(parsed.answer) == int(reference)
        except ValueError:
            ok = False
        return Verdict(ok, parsed.answer, "correct" if ok else "wrong_answer")

    def render(self, problem: Problem, reasoning: str, answer: str) -> str:
        return f"{reasoning}\n#### {answer}"

    def lookup(self, question: str) -> Problem | None:
        m = _QUESTION.match(question.replace(INSTRUCTION, "").strip())
        if not m:
            return None
        a, op, b = int(m.group(1)), _OPS[m.group(2).lower()], int(m.group(3))
        suite = classify(a, op, b)
        return make_problem(suite, a, op, b) if suite else None

    def prompt_for(self, question: str) -> str:
        problem = self.lookup(question)
        if problem is not None:
            return problem.prompt
        q = question.replace(INSTRUCTION, "").strip()
        return f"<|im_start|>user\n{q}\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"

    def format_violation(self, prompt: str, completion: str) -> str | None:
        return chatml_format_violation(prompt, completion)
