"""PII detection and redaction with typed placeholders (`<EMAIL>`), safe for reasoning text.

Structured types are found by pattern and, where the type has one, a checksum: credit cards (Luhn, known
issuer prefixes), IBANs (ISO 13616 mod-97), US SSNs (area/group/serial rules). Numbers that are part of
the maths are left alone: a digit run next to an arithmetic operator or `=` is a number, not an
identifier, and a bare digit run is only a phone number or an SSN when a cue word says so ("call",
"SSN"). Person names are found from cues (a title, a self-introduction, a sign-off, a `Name:` field) or
as a full name (a common given name followed by a capitalised surname); a lone given name in a word
problem ("Natalia sold 48 clips") identifies nobody and stays.

Most text has no PII, so `redact_rows` first asks Arrow's RE2 engine which rows could hold any
(vectorised) and runs the Python detectors on those rows only.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

PII_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN", "ADDRESS", "PERSON")
STRUCTURED_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN")

# An operator or '=' right before or after a digit run marks it as arithmetic.
_OP_BEFORE = re.compile(r"[=+*/×÷^<>]\s*$|(?<![A-Za-z])-\s*$")
_OP_AFTER = re.compile(r"^\s*(?:[=+*/×÷^<>]|-\s*\d)")


def _arithmetic_context(text: str, start: int, end: int) -> bool:
    """Whether this value, here or anywhere else in the text, is an operand or a result of arithmetic."""
    value = text[start:end]
    at = text.find(value)
    while at != -1:
        stop = at + len(value)
        if _OP_BEFORE.search(text[max(0, at - 3) : at]) or _OP_AFTER.match(text[stop : stop + 3]):
            return True
        at = text.find(value, stop)
    return False


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_issuer_ok(d: str) -> bool:
    if not 13 <= len(d) <= 19:
        return False
    if d[0] == "4":
        return len(d) in (13, 16, 19)
    two, four = int(d[:2]), int(d[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return len(d) == 16
    if two in (34, 37):
        return len(d) == 15
    if d.startswith("6011") or two == 65 or 644 <= int(d[:3]) <= 649:
        return len(d) in (16, 19)
    if 3528 <= four <= 3589:
        return len(d) in (16, 19)
    if two in (36, 38, 39) or 300 <= int(d[:3]) <= 305:
        return len(d) in (14, 16)
    return False


def iban_ok(raw: str) -> bool:
    s = raw.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def ssn_ok(area: str, group: str, serial: str) -> bool:
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<!\d)(?<!\d[.,])(?:(?:\d{4}[ -]){3}\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5}|\d{13,19})(?!\d|[.,]\d)")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_SSN_CUED = re.compile(
    r"(?i:\b(?:ssn|social security(?: number| no\.?)?)\b[\s:#]*(?:is\s*)?)(\d{3})[ ]?(\d{2})[ ]?(\d{4})\b"
)
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]*\d)"
)
_IPV6 = re.compile(
    r"(?<![0-9A-Fa-f:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?"
    r"|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})(?![0-9A-Fa-f:])"
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"  # North American
    r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)"  # international, with a +
)
_PHONE_CUED = re.compile(
    r"(?i:\b(?:phone|call|tel|mobile|cell|text|reach|whatsapp|fax)\b[^\n\d]{0,20}?)(\d{10,11})(?!\d)"
)
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Circle|"
    r"Parkway|Pkwy|Highway|Hwy|Square|Sq)"
)
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\.?\s+){1,3}" + _STREET + r"\b\.?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[\w-]+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)*(?:,\s*|\s+)[A-Z]{2}\s+\d{5}(?:-\d{4})?)?"
)

# Common given names (US SSA and UK ONS top lists), for "Given Surname" full names.
_GIVEN = frozenset(
    """
James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew Anthony
Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald Edward Jason Jeffrey Ryan
Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander
Frank Patrick Raymond Jack Dennis Jerry Tyler Aaron Jose Adam Nathan Henry Douglas Zachary Peter Kyle
Noah Ethan Jeremy Walter Christian Keith Roger Terry Austin Sean Gerald Carl Harold Dylan Arthur Lawrence
Jordan Jesse Bryan Billy Bruce Gabriel Joe Logan Alan Juan Albert Willie Elijah Wayne Randy Vincent Liam
Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Sandra Margaret
Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah Stephanie Dorothy Rebecca Sharon Laura
Cynthia Amy Kathleen Angela Shirley Brenda Emma Anna Pamela Nicole Samantha Katherine Christine Helen
Debra Rachel Carolyn Janet Maria Catherine Heather Diane Olivia Julie Joyce Victoria Ruth Virginia Lauren
Kelly Christina Joan Evelyn Judith Andrea Hannah Megan Cheryl Jacqueline Martha Madison Teresa Gloria Sara
Janice Ann Kathryn Abigail Sophia Frances Jean Alice Judy Isabella Julia Grace Amber Denise Danielle
Marilyn Beverly Charlotte Natalie Theresa Diana Brittany Doris Kayla Alexis Lori Marie Ava Mia Chloe Ella
Oliver Harry Charlie Freddie Alfie Theo Leo Oscar Archie Arjun Mohammed Muhammad Ahmed Ali Omar Fatima
Aisha Priya Wei Ming Hiroshi Yuki Sofia Lucas Mateo Luca Giulia Marco Pierre Marie Hans Klaus Ingrid Lars
Sven Anders Olga Ivan Dmitri Elena Carlos Luis Miguel Ana Camila Valentina Diego Pablo Rosa
""".split()
)
_NAME = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_PERSON_CUED = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam)\.?\s+|(?i:\bmy name is\s+|\bI am\s+|\bI'm\s+|\bthis is\s+|"
    r"\bcall me\s+|\bname\s*:\s*|\bsigned\s*,?\s*|\b(?:thanks|regards|cheers|sincerely|best),?\s*\n?\s*(?:--\s*)?))"
    r"(" + _NAME + r"(?:\s+" + _NAME + r")?)"
)
# A lookahead, so that "Name James Okafor" also yields the overlapping pair "James Okafor".
_FULL_NAME = re.compile(r"\b(?=(" + _NAME + r")\s+(" + _NAME + r")\b)")
_NOT_A_SURNAME = frozenset(
    "The A An And But Or If Then So Street Avenue Road Lane Drive Monday Tuesday Wednesday Thursday Friday "
    "Saturday Sunday January February March April May June July August September October November December "
    "Answer Question Step Total".split()
)

# What RE2 must find in a row for any detector to have a chance (a superset of every pattern's trigger).
# Kept tight: capitalised word pairs count only when the first is a known given name, and a number
# followed by words only when a street type follows, so most word-problem text needs no Python at all.
PREFILTER = (
    r"@|\d{3}[ .)-]+\d{3}|\d{3}-\d{2}-\d{4}|\d{4}[ -]\d{4}|\d{9,}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[A-Z]{2}\d{2}"
    r"|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:|::[0-9A-Fa-f]|(?:^|[^\w)])\+\d"
    r"|\b\d{1,5}[A-Za-z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\.?\s+){1,3}" + _STREET + r"\b"
    r"|\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam)\b"
    r"|(?i:\b(?:name|i am|i'm|this is|call me|signed|thanks|regards|cheers|"
    r"sincerely|best|ssn|social security|phone|call|tel|mobile|cell|text|reach|whatsapp|fax)\b)"
    r"|\b(?:" + "|".join(sorted(_GIVEN)) + r")\s+[A-Z][a-z]+"
)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


def _spans(text: str, names: bool = True) -> list[Span]:
    found: list[Span] = []
    add = found.append
    for m in _EMAIL.finditer(text):
        add(Span(m.start(), m.end(), "EMAIL"))
    for m in _IBAN.finditer(text):
        if iban_ok(m.group()):
            add(Span(m.start(), m.end(), "IBAN"))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if _card_issuer_ok(digits) and luhn_ok(digits) and not _arithmetic_context(text, m.start(), m.end()):
            add(Span(m.start(), m.end(), "CREDIT_CARD"))
    for m in _SSN.finditer(text):
        if ssn_ok(*m.groups()) and not _arithmetic_context(text, m.start(), m.end()):
            add(Span(m.start(), m.end(), "SSN"))
    for m in _SSN_CUED.finditer(text):
        if ssn_ok(*m.groups()):
            add(Span(m.start(1), m.end(3), "SSN"))
    for m in _IPV4.finditer(text):
        if not _arithmetic_context(text, m.start(), m.end()):
            add(Span(m.start(), m.end(), "IP_ADDRESS"))
    for m in _IPV6.finditer(text):
        if m.group().count(":") >= 2 and any(c.isalpha() for c in m.group()) or "::" in m.group():
            add(Span(m.start(), m.end(), "IP_ADDRESS"))
    for m in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in m.group())
        if 7 <= digits <= 15 and not _arithmetic_context(text, m.start(), m.end()):
            add(Span(m.start(), m.end(), "PHONE"))
    for m in _PHONE_CUED.finditer(text):
        add(Span(m.start(1), m.end(1), "PHONE"))
    for m in _ADDRESS.finditer(text):
        add(Span(m.start(), m.end(), "ADDRESS"))
    if names:
        for m in _PERSON_CUED.finditer(text):
            words = m.group(1).split()
            if words[0] in _NOT_A_SURNAME:
                continue
            end = m.end(1) if len(words) < 2 or words[1] not in _NOT_A_SURNAME else m.start(1) + len(words[0])
            add(Span(m.start(1), end, "PERSON"))
        for m in _FULL_NAME.finditer(text):
            if m.group(1) in _GIVEN and m.group(2) not in _NOT_A_SURNAME and m.group(2) not in _GIVEN:
                add(Span(m.start(1), m.end(2), "PERSON"))
    return _resolve(found)


# When two detections overlap, the longer one wins; on a tie, the earlier type in this order.
_PRIORITY = {
    k: i for i, k in enumerate(("EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE", "ADDRESS", "PERSON"))
}


def _resolve(spans: list[Span]) -> list[Span]:
    spans.sort(key=lambda s: (-(s.end - s.start), _PRIORITY[s.kind], s.start))
    kept: list[Span] = []
    for s in spans:
        if all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s.start)


def detect(text: str, names: bool = True) -> list[Span]:
    """Every PII span in `text`, non-overlapping, in order."""
    return _spans(text, names)


def redact(text: str, names: bool = True) -> tuple[str, list[str]]:
    """`text` with each PII span replaced by its typed placeholder, and the types replaced (in order)."""
    spans = _spans(text, names)
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
    """Rows where any detector could fire (RE2, vectorised); the rest need no Python at all."""
    mask = pc.match_substring_regex(column, PREFILTER)
    return pc.fill_null(mask, False).to_pylist()


def redact_rows(
    column: pa.Array | pa.ChunkedArray, names: bool = True, values: list[str | None] | None = None
) -> tuple[list[str | None], list[list[str]]]:
    """Redact a string column row by row: the new values and, per row, the types replaced.

    `values` is the column as a Python list when the caller already has it (saves converting twice).
    """
    mask = candidate_mask(column)
    values = list(values if values is not None else column.to_pylist())
    kinds: list[list[str]] = [[] for _ in values]
    for i, hit in enumerate(mask):
        if hit and values[i] is not None:
            values[i], kinds[i] = redact(values[i], names)
    return values, kinds


def redact_column(column: pa.Array | pa.ChunkedArray, counts: Counter, names: bool = True) -> pa.Array:
    """Redact a string column; `counts` gains one per detection, keyed by type."""
    values, kinds = redact_rows(column, names)
    for k in kinds:
        counts.update(k)
    return pa.array(values, type=pa.string())


def count_detections(column: pa.Array | pa.ChunkedArray, names: bool = True) -> Counter:
    """PII detections per type in a string column (for the zero-PII check on the training set)."""
    counts: Counter = Counter()
    mask = candidate_mask(column)
    if any(mask):
        for value, hit in zip(column.to_pylist(), mask, strict=True):
            if hit:
                counts.update(s.kind for s in _spans(value, names))
    return counts
