"""The RE2 prefilter: which rows of a column could hold PII at all, and for which detector family, asked of Arrow
in one vectorised pass a family."""

from __future__ import annotations

from functools import cache

from flywheel_dagster.curation.pii.addresses import PREFIX_AMBIGUOUS, PREFIX_WORDS, STREET, SUFFIX_TYPES, TYPE_WORDS
from flywheel_dagster.curation.pii.names import FIELDS, RELATIONS, SIGN_OFF, TITLES
from flywheel_dagster.curation.pii.structured import PHONE_CUES

# What RE2 must find in a row for a detector to have a chance: a superset of every pattern's trigger, one part
# per detector family. PREFILTER_NAMES, a capitalised word pair, can only start an uncued full name, so a row
# that only it matches needs nothing but the name-pair check; PREFILTER_STRUCTURED, _ADDRESSES and _CUED_NAMES
# cover the structured shapes, street and town shapes, and cues followed by a capital. A row its part does not
# match is a row that family finds nothing in, so the detectors of a row run family by family (tests/test_pii.py
# checks each part on the corpora). Kept tight, so that most word-problem text and all of the playground's needs
# no Python at all.
_RE2_PARTICLES = (
    r"(?:(?:van|von|der|den|de|del|della|di|da|dos|das|do|du|des|la|le|ter|ten|zu|bin|ibn|binti|bint|al|el|af|"
    r"av|y)[ \t]+)*"
)
PREFILTER_NAMES = r"\p{Lu}\p{Ll}+[ \t]+" + _RE2_PARTICLES + r"\p{Lu}"
PREFILTER_STRUCTURED = (
    # a North American phone number always ends in 3 digits, one separator, 4 digits; arithmetic rarely does
    r"@|\d{3}[ .-]\d{4}|\d{3}-\d{2}-\d{4}|\d{4}[ -]\d{4}|\d{4}[ -]\d{6}|\d{9,}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
    r"|[A-Z]{2}\d{2}|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:|::[0-9A-Fa-f]|(?:^|[^\w+])\+\(?\d"
    # cued numbers
    r"|(?i:\b(?:" + PHONE_CUES + r")\b)[^\n\d]{0,25}(?:[ \t]{0,8}\r?\n[ \t]{0,8})?[(+]{0,2}\d[\d ().\-/]{5,}\d"
    r"|(?i:ssn|social|ss#|ss no)[^\d]{0,40}\d{3}"
)  # fmt: skip
PREFILTER_ADDRESSES = (
    # streets, and towns after them
    r"\d[A-Za-z]?,?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:\p{Lu}\S*[ \t]+){1,3}" + STREET + r"\b"
    r"|(?:" + PREFIX_WORDS + r")[ \t]|(?:" + PREFIX_AMBIGUOUS + r")[ \t]+(?:de|du|des|del|la|\p{Lu})|(?:" + SUFFIX_TYPES + r"|" + TYPE_WORDS + r")[ \t]+\d"
    r"|,[ \t]*(?:[A-Z]{1,2}-)?(?:\d{5}-?\d{3}|\d{4}-\d{3}|\d{2}-\d{3}|\d{3}[ \t]\d{2}|\d{4}[ \t]?[A-Z]{2}|\d{4,6}),?[ \t]+\p{Lu}"
    r"|,[ \t]*\p{Lu}[^\n,]*[ \t]\d{5,6}|\p{L}\)?,[ \t]*(?:[A-Z]{2}[ \t]+)?\d{5,6}|\p{L}-\d{5,6}"
    r"|[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}"
)  # fmt: skip
PREFILTER_CUED_NAMES = (
    r"\b(?:" + TITLES + r")\b|(?m:^[ \t]*(?:--|—|–)[ \t]*)\p{Lu}"
    r"|(?i:\b(?:my name is|my name's|i am|i'm|this is|call me|dear|hi|hello|hey|signed(?: by)?|on behalf of|"
    r"(?:submitted|written|sent|prepared|checked|reviewed|forwarded) by|according to|my (?:" + RELATIONS + r")|"
    r"forwarded from|ask))[ \t]*,?[ \t]*\p{Lu}"
    r"|(?i:\b(?:" + FIELDS + r"))[ \t]*:[ \t]*\p{Lu}"
    r"|(?i:\b(?:" + SIGN_OFF + r"))[ \t]*[!,]?[ \t]*\n?[ \t]*(?:--?[ \t]*)?\p{Lu}"
    r"|[ \t]wrote:"
)  # fmt: skip
# Their union, for callers that ask only whether any family could fire.
PREFILTER_OTHERS = PREFILTER_STRUCTURED + "|" + PREFILTER_ADDRESSES + "|" + PREFILTER_CUED_NAMES
PREFILTER = PREFILTER_OTHERS + "|" + PREFILTER_NAMES


@cache
def other_digits() -> str:
    """RE2's \\d is ASCII, the detectors' (Python's) is any decimal digit: "４１５-５５５-０１３２" is a phone to them. A
    row with a digit beyond ASCII (full-width, Arabic-Indic, Devanagari, ...) goes to every digit-using family
    whatever the parts above say; such rows are rare, and asking RE2 for \\p{Nd} in the parts blows up its
    automaton (100x). This is that class of digits, as this Python's Unicode tables have them (built on first
    use: scanning every code point takes about 0.1 s)."""
    runs: list[list[int]] = []
    for cp in range(128, 0x110000):
        if chr(cp).isdecimal():
            if runs and runs[-1][1] == cp - 1:
                runs[-1][1] = cp
            else:
                runs.append([cp, cp])
    return "[" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" if b > a else f"\\x{{{a:x}}}" for a, b in runs) + "]"
