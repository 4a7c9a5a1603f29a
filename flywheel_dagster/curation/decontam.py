"""Benchmark decontamination: a trace whose prompt shares a long n-gram with any benchmark problem is out.

Texts are compared as lower-cased word/symbol tokens. A benchmark problem shorter than n tokens (a
playground question is 5 tokens) is matched whole: the trace is contaminated when that token sequence
appears anywhere in its prompt. The task's prompt template (the same in every prompt, e.g. GSM8K's
instruction line) is stripped from both sides first: shared boilerplate is not evidence of anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from flywheel_dagster.curation.dedup import tokens
from flywheel_dagster.tasks.base import TaskSource


class BenchmarkIndex:
    def __init__(self, prompts: Iterable[str], n: int = 8, template: str = "") -> None:
        """`template`: the task's prompt for the question "{}" (task.prompt_for("{}")), or empty."""
        self.prefix, _, self.suffix = template.partition("{}") if "{}" in template else ("", "", "")
        if n < 1:
            raise ValueError(f"decontamination n-gram size must be >= 1, got {n}")
        self.n = n
        self.grams: set[int] = set()
        self.short: dict[int, set[int]] = {}  # length -> hashes of whole short benchmark prompts
        self.problems = 0
        for p in prompts:
            self.problems += 1
            toks = tokens(self._question(p))
            if len(toks) < n:
                self.short.setdefault(len(toks), set()).add(hash(tuple(toks)))
            else:
                self.grams.update(hash(tuple(toks[i : i + n])) for i in range(len(toks) - n + 1))
        self._cache: dict[str, bool] = {}

    def contaminated(self, prompt: str) -> bool:
        hit = self._cache.get(prompt)
        if hit is None:
            hit = self._check(tokens(self._question(prompt)))
            if len(self._cache) < 500_000:
                self._cache[prompt] = hit
        return hit

    @classmethod
    def for_task(cls, task: TaskSource, prompts: Iterable[str], n: int) -> BenchmarkIndex:
        """The index for a task's benchmark prompts, its prompt template stripped."""
        return cls(prompts, n, task.prompt_for("{}"))

    def _question(self, prompt: str) -> str:
        return prompt.removeprefix(self.prefix).removesuffix(self.suffix) if self.prefix or self.suffix else prompt

    def _check(self, toks: list[str]) -> bool:
        if self.grams and not self.grams.isdisjoint(_ngram_hashes(toks, self.n)):
            return True
        # A benchmark question of no tokens at all is in every prompt.
        return any(
            not length or not hashes.isdisjoint(_ngram_hashes(toks, length)) for length, hashes in self.short.items()
        )


def _ngram_hashes(toks: list[str], n: int) -> Iterator[int]:
    """hash(tuple(toks[i : i + n])) for each i, lazily (zip(toks, toks[1:], ...) builds each tuple once)."""
    return map(hash, zip(*(toks[i:] for i in range(n)), strict=False))
