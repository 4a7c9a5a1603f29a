"""Text as the detectors read it: characters that write a space, a dash or a symbol another way fold to the
ASCII one, one for one (no-break and the other Unicode spaces, Unicode dashes and the minus sign, full-width
forms such as "＠"), and invisible ones (zero-width spaces and joiners, the word joiner, soft hyphens, byte
order marks) are taken out. So "call 415–555–0132", "4111\u200b1111 1111 1111", "john＠example.com" and
"John\xa0Smith" are found as their ASCII twins are. Detection runs on the folded text and its spans are carried
back to the original, which is what gets redacted: the text outside a span stays as written."""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache

from flywheel_dagster.curation.pii.common import Span

# Characters with no width that can sit inside a number, an address or a name without showing.
INVISIBLE = frozenset("\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff")


@cache
def _table() -> dict[int, str | None]:
    """str.translate's table: each space (Zs), dash (Pd) and the minus sign to its ASCII form, line and paragraph
    separators to a newline, the full-width ASCII block (U+FF01-FF5E) to ASCII, the invisible ones to nothing.
    Built on first use from this Python's Unicode tables (about 0.1 s)."""
    table: dict[int, str | None] = {ord(c): None for c in INVISIBLE}
    for cp in range(0x80, sys.maxunicode + 1):
        kind = unicodedata.category(chr(cp))
        if kind == "Zs":
            table[cp] = " "
        elif kind == "Pd" or cp == 0x2212:
            table[cp] = "-"
        elif kind in ("Zl", "Zp"):
            table[cp] = "\n"
    for cp in range(0xFF01, 0xFF5F):
        table[cp] = chr(cp - 0xFEE0)
    return table


@cache
def _foldable() -> re.Pattern:
    """Any character _table changes (a search finds one far faster than translate goes through a text)."""
    return re.compile("[" + "".join(re.escape(chr(cp)) for cp in sorted(_table())) + "]")


@cache
def foldable_re2() -> str:
    """The same class for Arrow's RE2 (pyarrow.compute.match_substring_regex): which rows of a column fold."""
    return "[" + "".join(f"\\x{{{cp:04x}}}" for cp in sorted(_table())) + "]"


def fold(text: str) -> tuple[str, list[int] | None]:
    """The folded text (`text` itself when nothing folds), and where each of its characters stands in `text`
    (None when nothing was taken out, so every position is its own)."""
    if text.isascii() or _foldable().search(text) is None:
        return text, None
    folded = text.translate(_table())
    if len(folded) == len(text):
        return folded, None
    return folded, [i for i, ch in enumerate(text) if ch not in INVISIBLE]


def unfold(spans: list[Span], where: list[int] | None) -> list[Span]:
    """Spans of a folded text as spans of the original (an invisible character inside a span goes with it)."""
    if where is None:
        return spans
    return [Span(where[s.start], where[s.end - 1] + 1, s.kind) for s in spans]
