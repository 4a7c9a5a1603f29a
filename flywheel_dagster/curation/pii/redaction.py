"""Detection, redaction with typed placeholders (`<EMAIL>`), and counting, of a text or a string column.

Most text has no PII, so `redact_rows` and `redact_texts` first ask Arrow's RE2 engine which rows could hold
any, and for which detector family (vectorised), and run only those families' Python detectors on those rows.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel_dagster.curation.batching import Memo
from flywheel_dagster.curation.pii.addresses import address_spans
from flywheel_dagster.curation.pii.common import PII_TYPES, Span
from flywheel_dagster.curation.pii.fold import fold, foldable_re2, unfold
from flywheel_dagster.curation.pii.names import names_in, person_spans
from flywheel_dagster.curation.pii.prefilter import (
    PREFILTER_ADDRESSES,
    PREFILTER_CUED_NAMES,
    PREFILTER_NAMES,
    PREFILTER_STRUCTURED,
    other_digits,
)
from flywheel_dagster.curation.pii.structured import _EMAIL, iban_ok, structured_spans

# Detector families, as bits: which of them the prefilter says could fire in a row (see _row_modes).
_PAIR, _STRUCTURED, _ADDRESS, _CUED_NAME = 1, 2, 4, 8
_EVERY_FAMILY = _STRUCTURED | _ADDRESS | _CUED_NAME


def _spans(text: str, names: bool = True, mode: int = _EVERY_FAMILY) -> list[Span]:
    """The PII spans in `text`, running only the detector families `mode` names (all of them by default; a
    name pair alone, _PAIR, needs only the full-name check)."""
    low = text.lower()
    found = structured_spans(text, low) if mode & _STRUCTURED else []
    if mode & _ADDRESS:
        found += address_spans(text)
    if names:
        if mode & _CUED_NAME:
            found += person_spans(text, low)
        elif mode & _PAIR:
            found += [Span(start, end, "PERSON") for start, end in names_in(text)]
    return _resolve(found)


# When two detections overlap, the longer one wins; on a tie, the earlier type in this order.
_PRIORITY = {
    k: i for i, k in enumerate(("EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE", "ADDRESS", "PERSON"))
}


def _resolve(spans: list[Span]) -> list[Span]:
    """The spans that win, in order: longest first, then by _PRIORITY, each kept unless it overlaps one kept.
    The kept ones never overlap, so sorted by start their ends rise too, and only the two neighbours of a
    span's place can overlap it (bisect: a text with thousands of detections was quadratic here)."""
    spans.sort(key=lambda s: (-(s.end - s.start), _PRIORITY[s.kind], s.start))
    starts: list[int] = []
    kept: list[Span] = []  # by start
    for s in spans:
        i = bisect.bisect_left(starts, s.start)
        if (i and kept[i - 1].end > s.start) or (i < len(kept) and kept[i].start < s.end):
            continue
        starts.insert(i, s.start)
        kept.insert(i, s)
    return kept


def _found(folded: tuple[str, list[int] | None], names: bool, mode: int = _EVERY_FAMILY) -> list[Span]:
    """The spans the detectors find in a text's folded form (pii.fold), as spans of the text."""
    return unfold(_spans(folded[0], names, mode), folded[1])


def detect(text: str, names: bool = True) -> list[Span]:
    """Every PII span in `text`, non-overlapping, in order."""
    return _found(fold(text), names)


def redact(text: str, names: bool = True) -> tuple[str, list[str]]:
    """`text` with each PII span replaced by its typed placeholder, and the types replaced (in order)."""
    return _apply(text, _found(fold(text), names))


# Types whose value is its digits: written again with other separators, or none, it is the same value. (An IBAN's
# is its letters and digits, followed apart.)
_DIGIT_TYPES = frozenset({"SSN", "PHONE", "CREDIT_CARD", "IP_ADDRESS"})


def known_values(found: list[tuple[str, str]]) -> list[tuple[str, str, re.Pattern]]:
    """What the PII found in a record's texts ((type, value) pairs as the detectors read them, folded: as
    redact_texts reports them) looks like wherever else it appears, as (type, a substring its folded form
    cannot appear without, case-folded; pattern over folded text). A record names a value once (the SSN a cue
    names in the question, the name a greeting gives) and repeats it elsewhere without the cue ("219099999 -
    219099999 = 0", "Dear Xavrel Quondt" then "Xavrel Quondt gives"): redact_known finds those repeats.

    - A number: its digits with up to two spaces, dots, dashes, slashes or parentheses (or none) between them,
      not inside a longer number. A phone number is also followed without its country code ("+44 20 7946 0958"
      then "020 7946 0958": the E.164 code off, after an optional trunk 0) and without its trunk 0 ("020 7946
      0958" then "+44 20 7946 0958").
    - An IBAN: its letters and digits in any case, with or without the spaces or dashes of its groups; one whose
      account part is all digits also without its country letters.
    - An email in any case; a name of two words or more in any case and spacing; an address as written. A
      one-word name and a name's words alone are not followed: a surname is often a word ("Grant", "Senior"),
      and a lone given name identifies nobody."""
    keys = set()
    for kind, value in found:
        if not pair_ok(kind, value):  # not what a detector reports (a malformed record's pair): nothing to follow
            continue
        if kind == "IBAN":
            chars = re.sub(r"[^0-9A-Za-z]", "", value).upper()
            keys.add((kind, chars))
            if chars[2:].isdigit():  # all digits after the country: also written without it ("89 3704 0044 ...")
                keys.add((kind, chars[2:]))
        elif kind in _DIGIT_TYPES:
            digits = re.sub(r"[^0-9]", "", value)
            if len(digits) >= 7:
                keys.add((kind, digits))
            if kind == "PHONE":
                keys.update((kind, _TRUNK + core) for core in _national(value.lstrip(), digits))
        elif kind == "PERSON":
            words = tuple(value.split())
            if len(words) >= 2:
                keys.add((kind, words))
        else:
            keys.add((kind, value))
    # The longest first, so a number goes before a shorter one inside it.
    return [_known(kind, value) for kind, value in sorted(keys, key=lambda k: (-len(str(k[1])), str(k)))]


def pair_ok(kind: str, value: str) -> bool:
    """Whether `value` can be what the detectors report as `kind`: a PII type's, an IBAN with its check digits
    right, a number of 7 digits or more (an IP address: hex digits, colons and dots), an email as the detector
    reads one, an address of 4 characters or more with a digit (its house number or postcode) and a letter, a
    name with a letter. What a pair from elsewhere (a Parquet input's context_pii) must be to be followed: a
    blank one would be followed into every space, an address "1" into every 1."""
    if kind not in PII_TYPES or not value.strip():
        return False
    if kind == "IBAN":
        return iban_ok(re.sub(r"[^0-9A-Za-z]", "", value))
    if kind == "IP_ADDRESS":  # hex digits, colons and dots ("fe80::1", "10.0.0.1")
        return re.fullmatch(r"[0-9A-Fa-f:.]+", value) is not None
    if kind in _DIGIT_TYPES:
        return sum(c.isdigit() for c in value) >= 7
    if kind == "EMAIL":
        return _EMAIL.fullmatch(value) is not None
    if kind == "ADDRESS":
        return len(value.strip()) >= 4 and any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
    return any(c.isalpha() for c in value)  # PERSON


_TRUNK = "0?"  # a followed phone core that may follow a trunk 0 (see _known)


# ITU-T E.164 country calling codes of one and two digits; every other code has three. The codes are a prefix
# code: a number's leading digits say which one it starts with.
_ONE_DIGIT_CODES = frozenset("17")
_TWO_DIGIT_CODES = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63 64 65 66 81 82 84 86 "
    "90 91 92 93 94 95 98".split()
)


def _national(written: str, digits: str) -> list[str]:
    """The digits a phone number is written with in its own country: without its country code (written with +
    or 00, in parentheses or not), or without the trunk 0 that another country's caller leaves out."""
    written = written.lstrip("( ")
    if written.startswith(("+", "00")):
        rest = digits[2:] if written.startswith("00") else digits
        code = 1 if rest[:1] in _ONE_DIGIT_CODES else 2 if rest[:2] in _TWO_DIGIT_CODES else 3
        national = rest[code:].removeprefix("0")  # "+44 (0)20 ...": the trunk 0 written after the code
        return [national] if len(national) >= 7 else []
    if digits.startswith("0") and len(digits) >= 10:
        return [digits[1:]]
    return []


@lru_cache(maxsize=4096)
def _known(kind: str, value: str | tuple[str, ...]) -> tuple[str, str, re.Pattern]:
    """(kind, what the text cannot hold the value without, the pattern): for a number its digits, which its
    pattern's separators do not split, for an IBAN its letters and digits (case-folded); the pattern is then
    tried only on a text whose digits alone, or letters and digits alone, or case-folded form holds that."""
    if kind == "IBAN":
        chars = r"[\s\-]{0,2}".join(map(re.escape, value))
        pattern = re.compile(r"(?<![0-9A-Za-z])" + chars + r"(?![0-9A-Za-z])", re.IGNORECASE | re.ASCII)
        return kind, value.casefold(), pattern
    if kind in _DIGIT_TYPES:  # not inside a longer number ("1,219,099,999"), nor across arithmetic ("555 + 0.100")
        trunk = r"(?:0(?![.,])[\s.\-/()]{0,2})?" if value.startswith(_TRUNK) else ""  # not a decimal's "0."
        value = value.removeprefix(_TRUNK)
        digits = r"[\s.\-/()]{0,2}".join(value)
        if value.startswith("0"):  # nor here: "0.612345678" is a decimal, not 06 12 34 56 78
            digits = "0(?![.,])" + digits[1:]
        return kind, value, re.compile(r"(?<![0-9])(?<![0-9][.,])" + trunk + digits + r"(?![.,]?[0-9])")
    if kind == "PERSON":
        name = r"\s+".join(map(re.escape, value))
        return kind, _fold_case(value[0]), re.compile(r"(?<!\w)" + name + r"(?!\w)", re.IGNORECASE)
    if kind == "EMAIL":
        return kind, "@", re.compile(re.escape(value), re.IGNORECASE)
    # An address as written, not inside a longer one ("Via 555" after "Via 55"): bounded by ASCII letters and
    # digits alone, so it is found in text without spaces ("我住在Via Roma 10号")
    return kind, _fold_case(value), re.compile(r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])")


def _fold_case(text: str) -> str:
    """text.casefold() with the dotless and dotted i as "i": a text's case-insensitive match (re.IGNORECASE,
    which takes "İ" and "ı" for "i") holds its value's _fold_case, so the gate in redact_known never skips one."""
    return text.casefold().replace("\u0131", "i").replace("i\u0307", "i")


_NOT_DIGIT, _NOT_ALNUM = re.compile(r"[^0-9]"), re.compile(r"[^0-9a-z]")


def redact_known(text: str, known: list[tuple[str, str, re.Pattern]]) -> tuple[str, list[str]]:
    """`text` (already redacted) with every repeat of the known values (known_values) replaced by its typed
    placeholder too, found in its folded form, and the types replaced."""
    if not known:
        return text, []
    folded, where = fold(text)
    low = _fold_case(folded)
    digits = alnum = None  # the text's digits alone, and its letters and digits: what a number, an IBAN needs
    spans = []
    for kind, needed, pattern in known:
        if kind in _DIGIT_TYPES:
            if digits is None:
                digits = _NOT_DIGIT.sub("", folded)
            if needed not in digits:
                continue
        elif kind == "IBAN":
            if alnum is None:
                alnum = _NOT_ALNUM.sub("", low)
            if needed not in alnum:
                continue
        elif needed not in low:
            continue
        spans.extend(Span(m.start(), m.end(), kind) for m in pattern.finditer(folded))
    if not spans:
        return text, []
    return _apply(text, unfold(_resolve(spans), where))


def _apply(text: str, spans: list[Span]) -> tuple[str, list[str]]:
    if not spans:
        return text, []
    out, last = [], 0
    for s in spans:
        out.append(text[last : s.start])
        out.append(f"<{s.kind}>")
        last = s.end
    out.append(text[last:])
    return "".join(out), [s.kind for s in spans]


def candidate_mask(column: pa.Array | pa.ChunkedArray) -> list[bool]:
    """Rows where any detector could fire (RE2, vectorised, on the folded texts); the rest need no Python at all."""
    return [mode > 0 for mode in _folded_modes(column, names=True)[1]]


_FAMILIES = ((_STRUCTURED, PREFILTER_STRUCTURED), (_ADDRESS, PREFILTER_ADDRESSES), (_CUED_NAME, PREFILTER_CUED_NAMES))


def _matches(column: pa.Array | pa.ChunkedArray, pattern: str) -> np.ndarray:
    """Per row, whether RE2 finds `pattern` in it (a null: no), as a numpy bool array."""
    return pc.fill_null(pc.match_substring_regex(column, pattern), False).to_numpy(zero_copy_only=False)


def _row_modes(column: pa.Array | pa.ChunkedArray, names: bool) -> list[int]:
    """Per row, the detector families that could fire in it (bits; 0: none, so no Python at all): each family's
    part of the prefilter over the column (three small patterns cost less than their union, which RE2 runs
    as one larger automaton, and tell the families apart)."""
    modes = np.zeros(len(column), np.int64)
    for bit, pattern in ((_PAIR, PREFILTER_NAMES), *_FAMILIES) if names else _FAMILIES:
        modes[_matches(column, pattern)] |= bit
    # Beyond ASCII, the parts' \d misses other scripts' digits: a row with one gets the families that use digits.
    wide = np.flatnonzero(~pc.fill_null(pc.string_is_ascii(column), True).to_numpy(zero_copy_only=False))
    if len(wide):
        modes[wide[_matches(column.take(pa.array(wide)), other_digits())]] |= _STRUCTURED | _ADDRESS
    return modes.tolist()


def _folded(column: pa.Array | pa.ChunkedArray) -> tuple[dict[int, tuple[str, list[int] | None]], pa.Array | None]:
    """The rows of a string column that fold (pii.fold; RE2 finds them: most text is ASCII and folds to itself),
    by row, and the column with them folded (None when none fold: the prefilter reads the column as it is)."""
    wide = np.flatnonzero(~pc.fill_null(pc.string_is_ascii(column), True).to_numpy(zero_copy_only=False))
    if not len(wide):
        return {}, None
    rows = wide[_matches(column.take(pa.array(wide)), foldable_re2())]
    if not len(rows):
        return {}, None
    texts = column.take(pa.array(rows)).to_pylist()
    folded = {i: fold(t) for i, t in zip(rows.tolist(), texts, strict=True)}
    mask = np.zeros(len(column), dtype=bool)
    mask[rows] = True
    return folded, pc.replace_with_mask(column, pa.array(mask), pa.array([f[0] for f in folded.values()], column.type))


def _folded_modes(
    column: pa.Array | pa.ChunkedArray, names: bool
) -> tuple[dict[int, tuple[str, list[int] | None]], list[int]]:
    """The rows that fold (_folded) and, per row, the detector families its folded text could fire (_row_modes)."""
    folded, changed = _folded(column)
    return folded, _row_modes(column if changed is None else changed, names)


def redact_rows(column: pa.Array | pa.ChunkedArray, names: bool = True) -> tuple[list[str | None], list[list[str]]]:
    """Redact a string column row by row: the new values and, per row, the types replaced."""
    values = column.to_pylist()
    folded, modes = _folded_modes(column, names)
    kinds: list[list[str]] = [[] for _ in values]
    for i, mode in enumerate(modes):
        if mode and values[i] is not None:
            values[i], kinds[i] = _apply(values[i], _found(folded.get(i) or (values[i], None), names, mode))
    return values, kinds


def redact_texts(
    columns: list[list[str | None]], names: bool = True, memo: Memo | None = None
) -> list[tuple[list[str | None], list[tuple[str, ...]], list[tuple[tuple[str, str], ...]]]]:
    """Redact several columns (as Python lists) at once: per column, the new values, per row the types replaced
    and per row what was (type and value, for known_values). Each distinct text not in `memo` (a
    batching.Memo, kept across calls) goes through the RE2 prefilter and, where it could hold PII, the
    detectors, once; a repeated text costs a lookup."""
    found: dict[str, tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]] | None] = {}
    for values in columns:
        for v in values:
            if v is not None and v not in found:
                found[v] = None if memo is None else memo.get((v, names))
    unseen = [v for v, done in found.items() if done is None]
    if unseen:
        folded, modes = _folded_modes(pa.array(unseen, pa.string()), names)
        for i, (text, mode) in enumerate(zip(unseen, modes, strict=True)):
            plain, where = folded.get(i) or (text, None)
            spans = _spans(plain, names, mode) if mode else []
            if spans:  # the values as the detectors read them (folded), for known_values
                red, kinds = _apply(text, unfold(spans, where))
                done = (red, tuple(kinds), tuple((sp.kind, plain[sp.start : sp.end]) for sp in spans))
            else:
                done = (text, (), ())
            found[text] = done
            if memo is not None:
                memo.keep((text, names), done)
    none: tuple = (None, (), ())
    out = []
    for values in columns:
        done_rows = [none if v is None else found[v] for v in values]
        out.append(([d[0] for d in done_rows], [d[1] for d in done_rows], [d[2] for d in done_rows]))
    return out  # type: ignore[return-value]


def redact_column(column: pa.Array | pa.ChunkedArray, counts: Counter, names: bool = True) -> pa.Array:
    """Redact a string column; `counts` gains one per detection, keyed by type."""
    values, kinds = redact_rows(column, names)
    for k in kinds:
        counts.update(k)
    return pa.array(values, type=pa.string())


def count_detections(column: pa.Array | pa.ChunkedArray, names: bool = True) -> Counter:
    """PII detections per type in a string column (for the zero-PII check on the training set)."""
    counts: Counter = Counter()
    folded, modes = _folded_modes(column, names)
    if any(modes):
        for i, (value, mode) in enumerate(zip(column.to_pylist(), modes, strict=True)):
            if mode and value is not None:
                counts.update(s.kind for s in _found(folded.get(i) or (value, None), names, mode))
    return counts
