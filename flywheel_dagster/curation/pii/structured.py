"""Structured PII: emails, IBANs, credit cards, SSNs, IP addresses and phone numbers.

Found by pattern and, where the type has one, a checksum (Luhn, ISO 13616 mod-97, the SSN area/group/serial
rules). A digit run that is an operand or a result of arithmetic is a number, not an identifier; a bare
digit run is only a phone number or an SSN when a cue word says so, and a cued SSN is redacted wherever its
digits appear, even in a sum.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from flywheel_dagster.curation.pii.common import Span, at_keys

# An operator or '=' right before or after a digit run marks it as arithmetic; a field's '=' ("host=",
# "ssn=": two letters right before it) does not.
_OP_BEFORE = re.compile(r"(?:(?<![A-Za-z]{2})=|[+*/×÷^<>])\s*$|(?<![A-Za-z])-\s*$")
_OP_AFTER = re.compile(r"^\s*(?:[=+*/×÷^<>]|-\s*\d)")


def _arithmetic_context(text: str, start: int, end: int) -> bool:
    """Whether this value, here or anywhere else in the text, is an operand or a result of arithmetic."""
    value = text[start:end]
    at = text.find(value)
    while at != -1:
        stop = at + len(value)
        if _OP_BEFORE.search(text[max(0, at - 5) : at]) or _OP_AFTER.match(text[stop : stop + 6]):
            return True
        at = text.find(value, stop)
    return False


_OPERATOR = re.compile(r"[=+*/×÷^<>-]")  # every character _OP_BEFORE and _OP_AFTER need


class _Arithmetic:
    """_arithmetic_context for one text: each value answered once, and without a scan of the text for a value
    no operator stands near. _OP_BEFORE needs an operator in the 5 characters before an occurrence and
    _OP_AFTER one in the 6 after, so an occurrence can only count if it starts within 5 after an operator or
    ends within 5 before one; the text's substrings there are gathered once per length, and a value not among
    them is not arithmetic, as the scan would find. A value among them gets the scan. (A value repeated, or
    many values, were each looked for over the whole text: 48 KB of one card number repeated took 6.9 s.)"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.known: dict[str, bool] = {}
        ops = [m.start() for m in _OPERATOR.finditer(text)]
        self.starts = {s for p in ops for s in range(p + 1, min(p + 6, len(text) + 1))}
        self.ends = {e for p in ops for e in range(max(0, p - 5), p + 1)}
        self.near: dict[int, set[str]] = {}  # length -> the substrings that start or end there

    def __call__(self, start: int, end: int) -> bool:
        text, value = self.text, self.text[start:end]
        if value not in self.known:
            n = len(value)
            if n not in self.near:
                self.near[n] = {text[s : s + n] for s in self.starts} | {text[e - n : e] for e in self.ends if e >= n}
            self.known[value] = value in self.near[n] and _arithmetic_context(text, start, end)
        return self.known[value]


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
    """A 13-19 digit number with a payment-card issuer's prefix, whatever length that issuer usually uses.

    Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro, Mir, RuPay and Verve all start with
    1-6 (UATP with 1); RuPay also issues from 81/82, Troy from 9792.
    """
    if not 13 <= len(d) <= 19:
        return False
    return d[0] in "123456" or d[:2] in ("81", "82") or d.startswith("9792")


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


_EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(
    r"(?<!\d)(?<!\d[.,])(?:(\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?|\d{4}[ -]\d{6}[ -]\d{4,5})|\d{13,19})(?!\d|[.,]\d)"
)
_CARD_CUE = re.compile(
    r"(?i:\b(?:card|cards|visa|mastercard|amex|maestro|unionpay|cc|kreditkarte|karte|carte|tarjeta|cartão|carta)\b)"
)
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_SSN_CUED = re.compile(
    r"(?i:\b(?:ssn|ss#|ss no\.?|social security(?: number| no\.?| #)?|social)(?:\b|(?<=#))"
    r"[\s:#=]*(?:is\s+|number\s+|no\.?\s*|#\s*)?)(?<!\d)(\d{3})([ -]?)(\d{2})\2(\d{4})(?![\d-])"
)
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]*\d)"
)
# Not inside a word or a path of names ("std::vector", "Vec::new", "Foo::Bar" are code; a field's "IP:" may
# come before), and not cut before an IPv4 tail ("::ffff:192.0.2.1" is left to _IPV4); a full stop may follow.
_IPV6 = re.compile(
    r"(?:(?<![\w:])|(?<=[A-Za-z]:))(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?"
    r"|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})(?![\w:]|\.\d)"
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"  # North American
    r"|(?<![\w+])\+\(?\d{1,3}\)?(?:[ .\-/]{0,2}\(?\d{1,5}\)?){1,6}"  # international, with a +
)
PHONE_CUES = (
    r"phone|telephone|tel|telefon|telefone|telefono|teléfono|téléphone|tél|mobile|mobil|móvil|movil|celular|"
    r"cell|cellphone|handy|call|ring|text|sms|reach|whatsapp|fax"
)
_PHONE_CUE_KEYS = tuple(PHONE_CUES.split("|"))
# The cues that head a field of a form or a signature ("Tel.:", "Mobile:"), which may stand on the line above the
# number; "call", "reach", "text" and the like end sentences, and a list may follow them.
FIELD_PHONE_CUES = tuple(
    "phone telephone tel telefon telefone telefono teléfono téléphone tél mobile mobil móvil movil celular cell "
    "cellphone handy whatsapp fax".split()
)
# A cue, a few words (no digits, no line break but one right after a colon: "Phone:\n06 ..."), then the number:
# 7 to 15 digits in at most 7 groups. Across a line break only a field's cue counts (FIELD_PHONE_CUES): "Steps to
# reach:\n1000 2000 3000" is a list.
_PHONE_CUED = re.compile(
    r"(?i:\b(?:" + PHONE_CUES + r")\b(?<!call(?= it| them| this| that| the))[^\n\d]{0,25}?"
    r"(?:(?<=:)[ \t]{0,8}\r?\n[ \t]{0,8})?)"
    r"((?:\+?\(|\(?\+)?\d{1,15}+\)?(?:(?:[ .\-/]{1,2}|(?<=\)))\(?\d{1,12}+\)?){0,6})(?![\d.,]\d)"
)


# What each pattern cannot match without (a necessary part of every match, as a cheap search): a text without
# it skips the pattern, whose look-behinds cost more per character.
_GATES = {
    _EMAIL: re.compile("@"),
    _IBAN: re.compile(r"[A-Z]{2}\d\d"),
    _CARD: re.compile(r"\d{4}[ -]\d{4}[ -]\d{4}|\d{4}[ -]\d{6}[ -]\d{4}|\d{13}"),
    _SSN_CUED: re.compile(r"\d{3}[ -]?\d\d[ -]?\d{4}"),
    _SSN: re.compile(r"\d{3}-\d\d-\d{4}"),
    _IPV4: re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d"),
    _IPV6: re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]|::"),
    _PHONE: re.compile(r"\+|\d{3}[ .-]\d{3}[ .-]\d{4}|\)\s?\d{3}[ .-]\d{4}"),
}


def _finditer(pattern: re.Pattern, text: str) -> Iterator[re.Match]:
    return pattern.finditer(text) if _GATES[pattern].search(text) else iter(())


def _last_digit_end(text: str, start: int, end: int) -> int:
    while end > start and not text[end - 1].isdigit():
        end -= 1
    return end


def structured_spans(text: str, low: str) -> list[Span]:
    """The structured detections in `text` (`low` is `text.lower()`), overlapping, not yet resolved."""
    found: list[Span] = []
    add = found.append
    arithmetic = _Arithmetic(text)
    for m in _finditer(_EMAIL, text):
        add(Span(m.start(), m.end(), "EMAIL"))
    for m in _finditer(_IBAN, text):
        if iban_ok(m.group()):
            add(Span(m.start(), m.end(), "IBAN"))
    for m in _finditer(_CARD, text):
        value = m.group()
        if m.group(1) and not luhn_ok(re.sub(r"\D", "", value)):
            value = re.sub(r"[ -]\d{1,4}$", "", value)  # a grouped card followed by a short number (a CVV)
        digits = re.sub(r"\D", "", value)
        card_like = (
            bool(m.group(1)) or _card_issuer_ok(digits) or _CARD_CUE.search(text, max(0, m.start() - 30), m.start())
        )
        end = m.start() + len(value)
        if 13 <= len(digits) <= 19 and card_like and luhn_ok(digits) and not arithmetic(m.start(), end):
            add(Span(m.start(), end, "CREDIT_CARD"))
    cued_ssns = set()
    for m in _finditer(_SSN_CUED, text):
        if ssn_ok(m.group(1), m.group(3), m.group(4)):
            add(Span(m.start(1), m.end(4), "SSN"))
            cued_ssns.add(text[m.start(1) : m.end(4)])
    for value in cued_ssns:  # the same digits elsewhere, even in a sum, are the same SSN
        at = text.find(value)
        while at != -1:
            if not (text[at - 1 : at].isdigit() or text[at + len(value) : at + len(value) + 1].isdigit()):
                add(Span(at, at + len(value), "SSN"))
            at = text.find(value, at + len(value))
    for m in _finditer(_SSN, text):
        if ssn_ok(*m.groups()) and not arithmetic(m.start(), m.end()):
            add(Span(m.start(), m.end(), "SSN"))
    for m in _finditer(_IPV4, text):
        if not arithmetic(m.start(), m.end()):
            add(Span(m.start(), m.end(), "IP_ADDRESS"))
    for m in _finditer(_IPV6, text):
        value = m.group()
        if not any(c.isdigit() for c in value):  # "a::b", "dead:beef::": names, not an address
            continue
        if value.count(":") >= 2 and any(c.isalpha() for c in value) or "::" in value:
            add(Span(m.start(), m.end(), "IP_ADDRESS"))
    for m in _finditer(_PHONE, text):
        end = _last_digit_end(text, m.start(), m.end())
        digits = sum(c.isdigit() for c in text[m.start() : end])
        if 7 <= digits <= 15 and not arithmetic(m.start(), end):
            add(Span(m.start(), end, "PHONE"))
    for m in at_keys(_PHONE_CUED, text, low, _PHONE_CUE_KEYS):
        cue = text[m.start() : m.start(1)]
        if "\n" in cue and not cue.lower().startswith(FIELD_PHONE_CUES):
            continue
        end = _last_digit_end(text, m.start(1), m.end(1))
        digits = sum(c.isdigit() for c in text[m.start(1) : end])
        if 7 <= digits <= 15 and not arithmetic(m.start(1), end):
            add(Span(m.start(1), end, "PHONE"))
    return found
