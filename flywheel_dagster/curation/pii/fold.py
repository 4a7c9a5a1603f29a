"""Text as the detectors read it: characters that write a space, a dash, a digit or a symbol another way fold
to the ASCII one, one for one (no-break and the other Unicode spaces, Unicode dashes and the minus sign, any
script's digits, full-width and small forms such as "＠"), and invisible ones (zero-width spaces and joiners,
direction marks, soft hyphens, variation selectors, byte order marks) are taken out. So "call 415–555–0132",
"4111\u200b1111 1111 1111", "john＠example.com" and "John\xa0Smith" are found as their ASCII twins are.
Detection runs on the folded text and its spans are carried back to the original, which is what gets redacted:
the text outside a span stays as written."""

from __future__ import annotations

import re
import unicodedata
from functools import cache

from flywheel_dagster.curation.pii.common import Span

# Unicode's default-ignorable code points (DerivedCoreProperties.txt): no width and no glyph, so they can sit
# inside a number, an address or a name without showing (zero-width spaces and joiners, direction marks and
# embeddings, soft hyphens, variation selectors, tags, byte order marks, Hangul fillers).
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip


@cache
def _table() -> dict[int, str | None]:
    """str.translate's table: the default-ignorable code points to nothing; each space (Zs) to a space, dash (Pd)
    and the minus sign to '-', line and paragraph separators to a newline, each decimal digit of any script
    (Nd) to its ASCII digit, and any other character whose compatibility form (NFKC) is one ASCII character to
    that (full-width and small forms such as "＠" and "﹫", mathematical digits). Built on first use from this
    Python's Unicode tables, over the first two planes (about 0.03 s)."""
    table: dict[int, str | None] = {cp: None for lo, hi in _IGNORABLE for cp in range(lo, hi + 1)}
    for cp in range(0x80, 0x20000):
        if cp in table:
            continue
        ch = chr(cp)
        kind = unicodedata.category(ch)
        if kind == "Zs":
            table[cp] = " "
        elif kind == "Pd" or cp == 0x2212:
            table[cp] = "-"
        elif kind in ("Zl", "Zp"):
            table[cp] = "\n"
        elif kind == "Nd":
            table[cp] = str(unicodedata.digit(ch))
        elif kind[0] != "M" and len(plain := unicodedata.normalize("NFKC", ch)) == 1 and plain.isascii():
            if not plain.isdigit():  # "²", "₁", "①" are no digits of a number: 219-09-9999² stays an SSN
                table[cp] = plain
    return table


def _ranges() -> list[tuple[int, int]]:
    """The code points _table changes, as inclusive ranges."""
    out: list[list[int]] = []
    for cp in sorted(_table()):
        if out and cp == out[-1][1] + 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return [(lo, hi) for lo, hi in out]


@cache
def _foldable() -> re.Pattern:
    """Any character _table changes (a search finds one far faster than translate goes through a text)."""
    return re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _ranges()) + "]")


@cache
def foldable_re2() -> str:
    """The same class for Arrow's RE2 (pyarrow.compute.match_substring_regex): which rows of a column fold."""
    return "[" + "".join(f"\\x{{{lo:x}}}-\\x{{{hi:x}}}" for lo, hi in _ranges()) + "]"


def fold(text: str) -> tuple[str, list[int] | None]:
    """The folded text (`text` itself when nothing folds), and where each of its characters stands in `text`
    (None when nothing was taken out, so every position is its own)."""
    if text.isascii() or _foldable().search(text) is None:
        return text, None
    folded = text.translate(_table())
    if len(folded) == len(text):
        return folded, None
    table = _table()
    return folded, [i for i, ch in enumerate(text) if table.get(ord(ch), "") is not None]


def unfold(spans: list[Span], where: list[int] | None) -> list[Span]:
    """Spans of a folded text as spans of the original (an invisible character inside a span goes with it)."""
    if where is None:
        return spans
    return [Span(where[s.start], where[s.end - 1] + 1, s.kind) for s in spans]
