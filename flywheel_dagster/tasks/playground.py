"""The playground task: procedurally generated arithmetic with exactly checkable worked solutions.

Every solution works column by column from the right, writing the partial result so far after each
step, so each step can be checked on its own:

    Q:47+85            prompt
    7+5=12:2;4+8+1=13:32;1:132
    A:132              final answer

Suites are difficulty levels. The easy ones (the second operand has at most two digits) are what humans
wrote worked solutions for, and what the cycle-0 base model is bootstrapped on; the hard ones (both
operands have three digits) ask the model to combine digits in a column it only ever saw padded with 0,
which is where the flywheel has to earn its improvement.
"""

from __future__ import annotations

import random
import re

from flywheel_dagster.tasks.base import ParsedCompletion, Problem, Verdict, draw_held_out, generated_benchmark

EASY_SUITES = ["add_short", "sub_short", "mul_2x1"]
HARD_SUITES = ["add_long", "sub_long", "mul_3x1"]
SUITES = EASY_SUITES + HARD_SUITES
ALPHABET = list("0123456789+-*=:;QA\n")

_QUESTION = re.compile(r"^\s*(?:Q:)?\s*(\d{1,6})\s*([+\-*])\s*(\d{1,6})\s*$")
_PROMPT = re.compile(r"^Q:\d+[+\-*]\d+\n$")
_ALLOWED = frozenset(ALPHABET)
_ANSWER = re.compile(r"\nA:(-?\d+)\s*$")
_STEP = re.compile(r"^(?:(\d+)([+\-*])(\d+)(?:\+(\d+))?=(\d+))?:(\d+)$")


def _digits(n: int, width: int) -> list[int]:
    return [int(c) for c in str(n).zfill(width)[::-1]]


def solve_add(a: int, b: int) -> tuple[list[str], int]:
    width = max(len(str(a)), len(str(b)))
    steps, partial, carry = [], "", 0
    for da, db in zip(_digits(a, width), _digits(b, width), strict=True):
        s = da + db + carry
        partial = str(s % 10) + partial
        steps.append(f"{da}+{db}{'+1' if carry else ''}={s}:{partial}")
        carry = s // 10
    if carry:
        partial = "1" + partial
        steps.append(f":{partial}")
    return steps, int(partial)


def solve_sub(a: int, b: int) -> tuple[list[str], int]:
    if b > a:
        raise ValueError(f"playground subtraction expects a >= b, got {a}-{b}")
    width = len(str(a))
    steps, partial, borrow = [], "", 0
    for da, db in zip(_digits(a, width), _digits(b, width), strict=True):
        x = da - borrow
        borrow = 0
        if x < db:
            x += 10
            borrow = 1
        partial = str(x - db) + partial
        steps.append(f"{x}-{db}={x - db}:{partial}")
    result = int(partial)
    if str(result) != partial:
        steps.append(f":{result}")
    return steps, result


def solve_mul(a: int, d: int) -> tuple[list[str], int]:
    if not 0 <= d <= 9:
        raise ValueError(f"playground multiplication expects a one-digit multiplier, got {d}")
    steps, partial, carry = [], "", 0
    for da in _digits(a, len(str(a))):
        p = da * d + carry
        partial = str(p % 10) + partial
        steps.append(f"{da}*{d}{'+' + str(carry) if carry else ''}={p}:{partial}")
        carry = p // 10
    if carry:
        partial = str(carry) + partial
        steps.append(f":{partial}")
    return steps, int(partial)


# suite -> (range of the first operand, range of the second); subtraction caps the second at the first.
_RANGES = {
    "add_short": ((0, 999), (0, 99)),
    "sub_short": ((10, 999), (0, 99)),
    "mul_2x1": ((10, 99), (2, 9)),
    "add_long": ((100, 999), (100, 999)),
    "sub_long": ((100, 999), (100, 999)),
    "mul_3x1": ((100, 999), (2, 9)),
}


def make_problem(suite: str, a: int, b: int) -> Problem:
    op = {"add": "+", "sub": "-", "mul": "*"}[suite[:3]]
    solver = {"+": solve_add, "-": solve_sub, "*": solve_mul}[op]
    steps, result = solver(a, b)
    prompt = f"Q:{a}{op}{b}\n"
    return Problem(
        problem_id=f"{suite}/{a}{op}{b}",
        suite=suite,
        prompt=prompt,
        reference=str(result),
        solution=";".join(steps) + f"\nA:{result}",
    )


def classify(op: str, a: int, b: int) -> str | None:
    """The suite a question belongs to, or None when it is outside every suite's shape."""
    if op == "+":
        return "add_short" if b <= 99 else "add_long" if a >= 100 else None
    if op == "-":
        return None if b > a else "sub_short" if b <= 99 else "sub_long"
    if 2 <= b <= 9:
        return "mul_2x1" if 10 <= a <= 99 else "mul_3x1" if 100 <= a <= 999 else None
    return None


def random_problem(suite: str, rng: random.Random) -> Problem:
    if suite not in _RANGES:
        raise ValueError(f"unknown playground suite {suite!r}; expected one of {SUITES}")
    (a_lo, a_hi), (b_lo, b_hi) = _RANGES[suite]
    a = rng.randint(a_lo, a_hi)
    b = rng.randint(min(a, b_lo), min(a, b_hi)) if suite.startswith("sub") else rng.randint(b_lo, b_hi)
    return make_problem(suite, a, b)


class PlaygroundTask:
    """Arithmetic at six difficulty levels with an exact, step-checking verifier."""

    name = "playground"
    verifier_name = "playground-exact-v1"

    def __init__(self, seed: int = 0, benchmark_seed: int = 20240101, benchmark_size: int = 150) -> None:
        self.seed = seed
        self._held_out = {p.problem_id for p in self.benchmark(benchmark_size, benchmark_seed)}

    def suites(self) -> list[str]:
        return list(SUITES)

    def benchmark(self, problems_per_suite: int, seed: int) -> list[Problem]:
        return generated_benchmark(SUITES, problems_per_suite, f"benchmark-{seed}", random_problem)

    def _draw(self, suites: list[str], n: int, rng: random.Random) -> list[Problem]:
        return draw_held_out(suites, n, rng, random_problem, self._held_out)

    def traffic(self, cycle_index: int, n: int) -> list[Problem]:
        return self._draw(SUITES, n, random.Random(f"traffic-{self.seed}-{cycle_index}"))

    def anchors(self, n: int, seed: int) -> list[Problem]:
        return self._draw(EASY_SUITES, n, random.Random(f"anchors-{self.seed}-{seed}"))

    def parse(self, completion: str) -> ParsedCompletion:
        m = _ANSWER.search(completion)
        if not m:
            return ParsedCompletion(reasoning=completion.strip(), answer=None)
        return ParsedCompletion(reasoning=completion[: m.start()].strip(), answer=m.group(1))

    def verify(self, completion: str, reference: str) -> Verdict:
        parsed = self.parse(completion)
        if parsed.answer is None:
            return Verdict(False, None, "no_final_answer")
        for step in parsed.reasoning.split(";"):
            m = _STEP.match(step)
            if not m:
                return Verdict(False, parsed.answer, "malformed_step")
            x, op, y, plus, result, _partial = m.groups()
            if x is not None:
                value = {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op]
                if value + int(plus or 0) != int(result):
                    return Verdict(False, parsed.answer, "wrong_step")
        if parsed.answer != reference:
            return Verdict(False, parsed.answer, "wrong_answer")
        return Verdict(True, parsed.answer, "correct")

    def render(self, problem: Problem, reasoning: str, answer: str) -> str:
        return f"{reasoning}\nA:{answer}"

    # The teacher sees the problem worked out once, then the same question again: the only way to show a
    # solution within the playground alphabet.
    teacher_template = "{prompt}{privileged_context}\n{prompt}"

    # The model's alphabet has no room for rewording: only the trace as generated, or a re-solve by the model.
    reformat_strategies = ("as_is", "rephrase")

    def lookup(self, question: str) -> Problem | None:
        m = _QUESTION.match(question)
        if not m:
            return None
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        suite = classify(op, a, b)
        return make_problem(suite, a, b) if suite else None

    def prompt_for(self, question: str) -> str:
        q = question.strip()
        return (q if q.startswith("Q:") else f"Q:{q}") + "\n"

    def format_violation(self, prompt: str, completion: str) -> str | None:
        if not _PROMPT.match(prompt):
            return "prompt is not 'Q:<a><op><b>'"
        if not _ALLOWED.issuperset(completion):
            return "completion has characters outside the playground alphabet"
        return None
