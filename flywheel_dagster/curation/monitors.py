"""Collapse and drift monitors over a quarter's harvested traces.

- distinct_3: distinct token 3-grams / all 3-grams over a fixed-size sample of reasonings (a sample, so
  the figure does not shrink as the quarter grows); a collapsing model repeats itself.
- near_duplicate_rate: exact + near duplicates among the traces that reached deduplication. Exact duplicates
  are counted with exact dedup switched off too (they are kept then): the lab's no_dedup arms read 0.0 before.
- answer_diversity: over prompts with two or more samples, (distinct final answers - 1) / (samples - 1),
  averaged: 0 when every sample of every prompt gives the same answer. Over every prompt of the quarter up to
  PROMPT_SAMPLE prompts; beyond that over the PROMPT_SAMPLE prompts with the smallest digests (a uniform sample,
  each with all its traces), so memory stays bounded when every user asks something new; and past ANSWER_PAIRS
  distinct (prompt, answer) pairs over fewer of them, the smallest digests still, so it stays bounded when each
  prompt gets ever more distinct answers too. A prompt whose distinct answers pass PROMPT_ANSWERS counts with
  its figure at that point (its samples up to there) and its set is freed: no one prompt grows memory without
  end, and while the pairs stay under ANSWER_PAIRS its figure does not depend on when the others come.
- length_ks: two-sample Kolmogorov-Smirnov statistic between this quarter's reasoning lengths and the
  previous quarter's (from its monitors.json); None in the first cycle.
- verified_accuracy: correct / verified traces.
- verified_accuracy_drop: how far verified_accuracy fell below its best in the quarters before (the serving
  model's accuracy on its own traffic, measured before the next model trains on that traffic). The flywheel
  lab found it the signal that moves first when the loop feeds on itself (docs/lab.md); None in the first
  cycle.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flywheel_dagster.config import MonitorConfig, ThresholdConfig
from flywheel_dagster.curation.dedup import tokens

# monitor name -> (config field, fires when the value is below the threshold?)
MONITORS = {
    "distinct_3": ("distinct_3_min", True),
    "near_duplicate_rate": ("near_duplicate_rate_max", False),
    "answer_diversity": ("answer_diversity_min", True),
    "length_ks": ("length_ks_max", False),
    "verified_accuracy": ("verified_accuracy_min", True),
    "verified_accuracy_drop": ("verified_accuracy_drop_max", False),
}


def digest64(text: str) -> int:
    """64 bits of blake2b: a trace id's place in the reasoning sample (the smallest are kept) and a prompt's
    key. The same in every process (Python's hash() of a str is not), so Ray workers compute them."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


PROMPT_SAMPLE = 100_000  # prompts whose answers answer_diversity follows
ANSWER_PAIRS = 250_000  # distinct (prompt, answer) pairs it holds at most (about 30 MB): fewer prompts past that
PROMPT_ANSWERS = 25_000  # distinct answers one prompt holds at most: past that its figure is fixed


class MonitorAccumulator:
    """Fed batch by batch during the harvest; memory bounded by the sample sizes (reasonings and prompts)."""

    def __init__(
        self,
        sample_size: int,
        prompt_sample: int = PROMPT_SAMPLE,
        answer_pairs: int = ANSWER_PAIRS,
        prompt_answers: int = PROMPT_ANSWERS,
    ) -> None:
        self.sample_size = sample_size
        self.prompt_sample = max(prompt_sample, 1)
        self.answer_pairs = max(answer_pairs, 1)
        self.prompt_answers = max(1, min(prompt_answers, self.answer_pairs))  # one prompt alone stays in the bound
        self._pairs = 0  # sum of the answer sets' sizes
        self._sample: list[tuple[int, str]] = []  # min-heap of (-key, reasoning): keeps the smallest keys
        self._answers: dict[int, set] = defaultdict(set)
        self._samples_per_prompt: Counter = Counter()
        self._prompts: list[int] = []  # min-heap of -digest over the prompts followed: the largest on top
        self._frozen: dict[int, int] = {}  # prompt -> its distinct answers when they passed prompt_answers
        self.verified = 0
        self.correct = 0
        self.dedup_seen = 0
        self.duplicates = 0

    def add(self, trace_id: str, prompt: str, reasoning: str, answer: str | None, correct: bool | None) -> None:
        keys = (np.array([digest64(trace_id)], np.uint64), np.array([digest64(prompt)], np.uint64))
        verdict = np.array([-1 if correct is None else int(correct)], np.int8)
        self.add_rows(*keys, [answer], verdict, np.zeros(1, np.int64), lambda _: reasoning)

    def add_rows(
        self,
        sample_keys: np.ndarray,
        prompt_keys: np.ndarray,
        answers: list[str | None],
        correct: np.ndarray,
        rows: np.ndarray,
        reasoning: Callable[[int], str],
    ) -> None:
        """Rows `rows` (int array) of a batch, by their keys (uint64 arrays: digest64 of the trace id and of the
        prompt) and verdicts (int8: 1 correct, 0 wrong, -1 not verified); `reasoning(i)` is asked only for the
        rows that enter the sample."""
        if not len(rows):
            return
        sample, size = self._sample, self.sample_size
        candidates = rows
        if len(sample) >= size:  # full: only a key below the largest kept can enter (numpy sorts most rows out)
            candidates = rows[sample_keys[rows] <= np.uint64(-sample[0][0])]
        for i, k in zip(candidates.tolist(), sample_keys[candidates].tolist(), strict=True):
            key = -k
            if len(sample) < size:
                heapq.heappush(sample, (key, reasoning(i)))
            elif key >= sample[0][0]:
                item = (key, reasoning(i))
                if item > sample[0]:
                    heapq.heapreplace(sample, item)
        verdicts = correct[rows]
        self.verified += int((verdicts >= 0).sum())
        self.correct += int((verdicts == 1).sum())
        counts, answer_sets, followed, frozen = self._samples_per_prompt, self._answers, self._prompts, self._frozen
        if len(counts) >= self.prompt_sample:  # full: a prompt above the largest followed is not followed
            rows = rows[prompt_keys[rows] <= np.uint64(-followed[0])]
        for i, p in zip(rows.tolist(), prompt_keys[rows].tolist(), strict=True):
            if p not in counts:  # a prompt not followed yet: in while fewer than `most`, else if below the largest
                if len(counts) < self.prompt_sample:
                    heapq.heappush(followed, -p)
                elif p < -followed[0]:
                    self._unfollow(-heapq.heapreplace(followed, -p))
                else:
                    continue
            elif frozen and p in frozen:
                continue
            counts[p] += 1
            answers_of = answer_sets[p]
            if answers[i] not in answers_of:
                answers_of.add(answers[i])
                self._pairs += 1
                if len(answers_of) > self.prompt_answers:  # ever more answers to one prompt: its figure stands
                    frozen[p] = len(answer_sets.pop(p))
                    self._pairs -= frozen[p]
                    continue
                # Too many pairs: follow fewer prompts, dropping the largest digests (the sample stays the prompts
                # below a threshold that only falls, each followed from its first sample on).
                while self._pairs > self.answer_pairs and len(followed) > 1:
                    self._unfollow(-heapq.heappop(followed))
                    self.prompt_sample = len(followed)

    def _unfollow(self, prompt: int) -> None:
        del self._samples_per_prompt[prompt]
        if self._frozen.pop(prompt, None) is None:
            self._pairs -= len(self._answers.pop(prompt))

    def lengths(self) -> list[int]:
        return sorted(len(r) for _, r in self._sample)

    def result(self, previous_lengths: list[int] | None, previous: dict | None = None) -> dict:
        """The figures; `previous`: the quarter before's result (its lengths and best verified accuracy)."""
        figures = self._figures(
            previous_lengths if previous_lengths is not None else (previous or {}).get("reasoning_lengths")
        )
        best_before = best_verified_accuracy(previous)
        accuracy = figures["verified_accuracy"]
        figures["verified_accuracy_drop"] = (
            round(best_before - accuracy, 4) if best_before is not None and accuracy is not None else None
        )
        figures["verified_accuracy_best"] = max((a for a in (best_before, accuracy) if a is not None), default=None)
        return figures

    def _figures(self, previous_lengths: list[int] | None) -> dict:
        reasonings = [r for _, r in self._sample]
        grams, distinct = 0, set()
        for r in reasonings:
            t = tokens(r)
            for i in range(len(t) - 2):
                distinct.add((t[i], t[i + 1], t[i + 2]))
                grams += 1
        frozen = self._frozen.get
        diversities = [
            ((frozen(p) or len(self._answers[p])) - 1) / (n - 1) for p, n in self._samples_per_prompt.items() if n >= 2
        ]
        lengths = self.lengths()
        return {
            "distinct_3": round(len(distinct) / grams, 4) if grams else None,
            "near_duplicate_rate": round(self.duplicates / self.dedup_seen, 4) if self.dedup_seen else None,
            "answer_diversity": round(float(np.mean(diversities)), 4) if diversities else None,
            "length_ks": round(ks_statistic(lengths, previous_lengths), 4) if previous_lengths and lengths else None,
            "verified_accuracy": round(self.correct / self.verified, 4) if self.verified else None,
            "sampled_reasonings": len(reasonings),
            "mean_reasoning_chars": round(float(np.mean(lengths)), 1) if lengths else None,
            "reasoning_lengths": lengths,
        }


def best_verified_accuracy(monitors: dict | None) -> float | None:
    """The best verified accuracy up to the quarter whose monitors these are (older files: its own)."""
    if not monitors:
        return None
    return monitors.get("verified_accuracy_best", monitors.get("verified_accuracy"))


def ks_statistic(a: list[int], b: list[int]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    x, y = np.sort(np.asarray(a)), np.sort(np.asarray(b))
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / len(x)
    cdf_y = np.searchsorted(y, grid, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


@dataclass(frozen=True)
class MonitorVerdict:
    name: str
    value: float | None
    level: str  # "ok", "warn", "block", "n/a"
    message: str


def judge(name: str, value: float | None, cfg: MonitorConfig) -> MonitorVerdict:
    field, below = MONITORS[name]
    t: ThresholdConfig = getattr(cfg, field)
    if value is None:
        return MonitorVerdict(name, None, "n/a", f"{name}: not measurable this cycle")
    side = "below" if below else "above"

    def fires(level: float | None) -> bool:
        return level is not None and (value < level if below else value > level)

    if fires(t.block):
        return MonitorVerdict(name, value, "block", f"{name} = {value} is {side} the block level {t.block}")
    if fires(t.warn):
        return MonitorVerdict(name, value, "warn", f"{name} = {value} is {side} the warn level {t.warn}")
    levels = [f"{kind} {side} {level}" for kind, level in (("warn", t.warn), ("block", t.block)) if level is not None]
    return MonitorVerdict(name, value, "ok", f"{name} = {value} ({', '.join(levels) or 'no warn or block level set'})")
