"""What the PII detectors share: the types, a detection (`Span`), Unicode letter classes, keyed matching."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

PII_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN", "ADDRESS", "PERSON")
STRUCTURED_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


def _char_class(keep: Callable[[str], bool]) -> str:
    """A regex class of the Latin, Greek and Cyrillic letters `keep` accepts (Python's re has no \\p{Lu})."""
    blocks = ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x52F), (0x1E00, 0x1FFF))
    runs: list[list[int]] = []
    for lo, hi in blocks:
        for cp in range(lo, hi + 1):
            if keep(chr(cp)):
                if runs and runs[-1][1] == cp - 1:
                    runs[-1][1] = cp
                else:
                    runs.append([cp, cp])
    return "[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in runs) + "]"


# Exactly RE2's \p{Lu} and \p{Ll} within these blocks, so that PREFILTER's pairs cover every name pair.
UP = _char_class(lambda c: unicodedata.category(c) == "Lu")
LO = _char_class(lambda c: unicodedata.category(c) == "Ll")
LETTER = _char_class(str.isalpha)


def at_keys(pattern: re.Pattern, text: str, haystack: str, keys: tuple[str, ...]) -> list[re.Match]:
    """pattern.match at every place in `haystack` (`text`, or its lower-cased copy) where a key starts."""
    found, tried = [], set()
    if len(haystack) != len(text):  # lower-casing moved the offsets ("İ"): the keys' places in `text` itself
        for at in sorted({m.start() for m in _keys_in_any_case(keys).finditer(text)}):
            if m := pattern.match(text, at):
                found.append(m)
        return found
    for key in keys:
        at = haystack.find(key)
        while at != -1:
            if at not in tried:
                tried.add(at)
                if m := pattern.match(text, at):
                    found.append(m)
            at = haystack.find(key, at + 1)
    return found


@lru_cache(maxsize=64)
def _keys_in_any_case(keys: tuple[str, ...]) -> re.Pattern:
    """Where any key starts, in any case (a look-ahead, so keys that overlap are all found)."""
    return re.compile("(?=" + "|".join(map(re.escape, keys)) + ")", re.IGNORECASE)
