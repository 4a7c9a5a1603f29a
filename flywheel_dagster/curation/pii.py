"""PII detection and redaction with typed placeholders (`<EMAIL>`), safe for reasoning text.

Structured types are found by pattern and, where the type has one, a checksum: credit cards (Luhn; a
number grouped like a card, or an issuer's prefix, or a card cue), IBANs (ISO 13616 mod-97), US SSNs
(area/group/serial rules). Numbers that are part of the maths are left alone: a digit run next to an
arithmetic operator or `=` is a number, not an identifier, and a bare digit run is only a phone number or
an SSN when a cue word says so ("call", "Tel.", "SSN"). A cue outranks the maths: an SSN that a cue names
is redacted wherever its digits appear. Addresses are street lines (a street type in English, French,
Spanish, Italian, Portuguese, German, Nordic, Dutch, Slavic, Romanian, Indonesian or Vietnamese use, or a
house number before a postcode and town). Person names are found from cues (a title, a
self-introduction, a sign-off, a `Name:` field) or as a full name: a known given name followed by a
capitalised surname, or a known family name of a family-name-first culture followed by a known given
name. Names are Unicode-aware (Latin, Greek, Cyrillic; apostrophes, hyphens, particles such as "van
der" or "Ó"); the given and family names are the multi-country list in `pii_names.txt` (written by
`tests/make_pii_names.py`). A lone given name in a word problem ("Natalia sold 48 clips") identifies
nobody and stays.

Most text has no PII, so `redact_rows` first asks Arrow's RE2 engine which rows could hold any
(vectorised) and runs the Python detectors on those rows only.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

PII_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN", "ADDRESS", "PERSON")
STRUCTURED_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN")
NAMES_FILE = Path(__file__).with_name("pii_names.txt")

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


def _char_class(keep) -> str:  # noqa: ANN001 - a str predicate
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
_UP = _char_class(lambda c: unicodedata.category(c) == "Lu")
_LO = _char_class(lambda c: unicodedata.category(c) == "Ll")
_LETTER = _char_class(str.isalpha)

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
_IPV6 = re.compile(
    r"(?<![0-9A-Fa-f:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?"
    r"|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})(?![0-9A-Fa-f:])"
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"  # North American
    r"|(?<![\w+])\+\(?\d{1,3}\)?(?:[ .\-/]{0,2}\(?\d{1,5}\)?){1,6}"  # international, with a +
)
_PHONE_CUES = (
    r"phone|telephone|tel|telefon|telefone|telefono|teléfono|téléphone|tél|mobile|mobil|móvil|movil|celular|"
    r"cell|cellphone|handy|call|ring|text|sms|reach|whatsapp|fax"
)
_PHONE_CUE_KEYS = tuple(_PHONE_CUES.split("|"))
# A cue, a few words (no digits, no line break), then the number: 7 to 15 digits in at most 7 groups.
_PHONE_CUED = re.compile(
    r"(?i:\b(?:" + _PHONE_CUES + r")\b(?<!call(?= it| them| this| that| the))[^\n\d]{0,25}?)"
    r"((?:\+?\(|\(?\+)?\d{1,15}+\)?(?:(?:[ .\-/]{1,2}|(?<=\)))\(?\d{1,12}+\)?){0,6})(?![\d.,]\d)"
)

_NUM = r"\d{1,5}[A-Za-z]?(?:[/-]\d{1,5}[A-Za-z]?)?"  # a house number: 12, 12a, 3/4, 46-32
_W = _UP + _LETTER + r"*(?:['’-]" + _LETTER + r"+)*"  # a capitalised word of a street or town name
_CONNECT = (
    r"(?:de|del|della|dei|des|du|de la|la|le|les|di|da|das|dos|do|van|von|der|den|am|an|im|zum|zur|of|the|y|e|số)"
)
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Circle|"
    r"Parkway|Pkwy|Highway|Hwy|Square|Sq|Close|Crescent|Grove|Gardens|Mews|Row|Walk|Path|Marg|Nagar|Ganj|"
    r"Alley|Bend|Bluff|Brook|Bypass|Causeway|Common|Corner|Cove|Creek|Crest|Crossing|Curve|Dale|Estates|"
    r"Expressway|Extension|Ferry|Flat|Ford|Forge|Fork|Freeway|Glen|Harbor|Haven|Heights|Hollow|Junction|Knoll|"
    r"Knolls|Landing|Loop|Manor|Meadow|Meadows|Mill|Mission|Motorway|Orchard|Oval|Passage|Pike|Plaza|Point|"
    r"Ridge|Route|Ramp|Run|Shore|Shores|Spur|Station|Stravenue|Summit|Trace|Track|Trail|Turnpike|Valley|View|"
    r"Villages?|Ville|Vista|Wells?|Roads|Streets)"
)
_UNIT_WORDS = r"(?:Apt|Apartment|Appartamento|Suite|Ste|Unit|Flat|Floor|Piano|Puerta|Piso|Bl|Sc|Ap|Et|Whg|Top|#)"
_UNIT = r"(?:,?[ \t]+" + _UNIT_WORDS + r"\.?[ \t]*[\w-]+){0,4}"
_US_TAIL = r"(?:,[ \t]*" + _W + r"(?:[ \t]+" + _W + r")*(?:,[ \t]*|[ \t]+)[A-Z]{2}[ \t]+\d{5}(?:-\d{4})?)"
_UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}"
_POSTCODE = (
    r"(?:[A-Z]{1,2}-)?(?:\d{5}-?\d{3}|\d{4}-\d{3}|\d{2}-\d{3}|\d{3}[ \t]\d{2}|\d{4}[ \t]?[A-Z]{2}(?![A-Za-z])|\d{4,6})"
)
_NOT_NO = r"(?!(?:No|Nr|Nº|" + _UNIT_WORDS[3:-1] + r")\b)"  # "Nr. 5" is the house number, not the street
# Vietnamese and Indonesian ward / district / city words between a street and its postcode.
_ADMIN = r"(?:[Pp]hường|[Qq]uận|[Xx]ã|[Hh]uyện|[Tt]ỉnh|[Tt]hành phố|TP\.|[Tt]hị trấn|[Kk]hóm|Kel\.|Kec\.|Kab\.)"
_TOWN = _W + r"(?:[ \t-]+(?:" + _CONNECT + r"|" + _W + r"|\(" + _W + r"\)))*"
# A town after the street line: postcode then town, town then postcode (ES, IT, RO, IN, ID), or US/UK.
_TAIL = (
    r"(?:(?:,[ \t]*" + _TOWN + r"){0,2},[ \t]*" + _POSTCODE + r",?[ \t]+" + _TOWN
    + r"|(?:,[ \t]*" + _TOWN + r"){1,2}(?:,[ \t]*|[ \t]+|-)(?:[A-Z]{2}[ \t]+)?(?:\d{5,6}|" + _UK_POSTCODE + r"))"
    + r"(?:[ \t]*\([A-Z]{2}\)|[ \t]*/[ \t]*[A-Z]{2}\b)?"
)  # fmt: skip
# English-style: number, name, street type ("221B Baker Street", "23/289, Khanna Street").
_ADDRESS_EN = re.compile(
    r"\b" + _NUM + r",?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:" + _W + r"\.?[ \t]+){1,3}" + _STREET + r"\b\.?" + _UNIT
    + r"(?:" + _US_TAIL + r"|" + _TAIL + r")?"
)  # fmt: skip
_PREFIX_WORDS = (
    r"[Rr]ue|[Aa]venue|[Bb]oulevard|[Cc]hemin|[Aa]llée|[Ii]mpasse|[Qq]uai|"
    r"Calle|C/|Avenida|Avda\.|Av\.|Plaza|Paseo|Camino|Carrera|Glorieta|Ronda|Travesía|Cuesta|Acceso|Pasaje|Vial|"
    r"Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Contrada|Strada|Incrocio|Canale|Borgo|Rotonda|Stretto|"
    r"Rua|R\.|Travessa|Estrada|Ladeira|Alameda|Praça|Rodovia|Condomínio|Parque|"
    r"[Uu]lica|ul\.|[Aa]leja|al\.|[Pp]lac|pl\.|[Oo]siedle|os\.|"
    r"Intrarea|Str\.|Drumul|[SȘŞ]oseaua|Calea|Bulevardul|Splaiul|Aleea|Piața|Piata|"
    r"Jalan|Jl\.|Gang|Gg\.|Số|[Đđ]ường|[Pp]hố|Ngõ|Hẻm|Kiệt|Khu|Khóm|Ấp|Thôn|Xóm|Av|"
    r"Sokak|Sokağı|Caddesi|Cad\.|Mahallesi|Mah\."
)
_PREFIX_AMBIGUOUS = r"[Rr]oute|[Cc]ours|[Pp]lace|C\."  # English words too ("in first place 20 points")


def _expand(word: str) -> list[str]:
    """The literal spellings of a word with [Xx] classes: "[Rr]ue" -> ["Rue", "rue"]."""
    m = re.search(r"\[([^\]]+)\]", word)
    if not m:
        return [word]
    return [v for c in m.group(1) for v in _expand(word[: m.start()] + c + word[m.end() :])]


_PREFIX_TYPES = (
    r"(?:" + _PREFIX_WORDS + r"|(?:" + _PREFIX_AMBIGUOUS + r")"
    r"(?=[ \t]+(?:de|du|des|del|la)\b|[ \t]+[A-ZÀ-Ý][a-zà-ÿ]{2}))"  # those only before a name
)
_SUFFIX_TYPES = (
    r"(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|steig|markt|"
    r"gatan|vägen|gränd|torget|gade|vej|veien|vegen|gata|katu|polku|kuja|bulevardi|"
    r"laan|dreef|straat|singel|gracht|plein|kade|steeg)"
)
_TYPE_WORDS = r"(?:ulica|utca|út|tér|trg|cesta|ulice|náměstí|nábřeží|třída|sokak|caddesi|bulvarı)"
# Continental: a prefix type ("12 rue de la Paix", "ul. Długa 5", "Jalan Merdeka No. 3") or a type-suffixed
# name ("Goethestraße 5", "Storgatan 3", "Molekova ulica 3b"), with the postcode and town when they follow.
_ADDRESS_PREFIXED = re.compile(
    r"(?<![\w.])" + _PREFIX_TYPES + r"[ \t]+(?:(?:" + _CONNECT + r"|" + _NOT_NO
    + _W + r"|\d{1,4}[a-z]?(?:/\d{1,4})*\.?)[ \t]+){0,4}" + r"(?:" + _NOT_NO + _W + r"|\d{1,3})"
    # the house number: "Via Roma, 10" or "Calle Mayor 5", but not the postcode of ", 75002 Paris"
    + r"(?:,[ \t]*\d{1,3}[A-Za-z]?(?:/\d{1,4})?(?!\d|-\d|[ \t]+" + _NOT_NO + _UP + r")"
    + r"|[ \t]+(?:No\.?|Nr\.?|n[°º]|nº|số)?[ \t]*" + _NUM + r"\.?)?" + _UNIT
    + r"(?:,?[ \t]+" + _ADMIN + r"[ \t]+" + _TOWN + r")*(?:[ \t]+\d{5,6}\b)?"
    + r"(?:" + _TAIL + r")?"
)  # fmt: skip
_NUM_BEFORE = re.compile(r"(?<![\w/-])" + _NUM + r",?[ \t]+$")  # "8, rue Jeanne Henry"
_ADDRESS_SUFFIXED = re.compile(
    r"(?<![\w.])(?:(?:" + _W + r"[ \t]+){0,2}" + _UP + _LETTER + r"*" + _SUFFIX_TYPES + r"|" + _W + r"[ \t]+"
    + _TYPE_WORDS + r")(?<=\.|[^\W\d_])(?![^\W\d_])[ \t]+" + _NUM + r"\.?" + r"(?:" + _TAIL + r")?"
)  # fmt: skip
# Any street name and number before a town: "Libuňská 16, 300 08 Praha", "Lago das Neves, 38, Tres Marias,
# 56721-797 Sales", "793 Anderson Greens, Powellchester, M7 3DU".
_ADDRESS_BEFORE_TOWN = re.compile(
    r"(?<![\w.])" + _W + r"(?:[ \t]+(?:" + _W + r"|" + _CONNECT + r")){0,3}(?:[ \t]+" + _LO + r"{2,}){0,2},?[ \t]+" + _NUM
    + r"\.?"
    + _TAIL
    + r"|\b" + _NUM + r",?[ \t]+(?:" + _W + r"[ \t]+){0,3}" + _W + _UNIT + r"(?:" + _US_TAIL + r"|" + _TAIL + r")"
)  # fmt: skip
# What must be in the text for each to be tried (see _PERSON_CUES): its literal prefixes (matched only where
# they are), its suffixes, and for a town a comma with a postcode after it.
_PREFIX_KEYS = tuple(
    {k.replace("\\", "") for w in (_PREFIX_WORDS + "|" + _PREFIX_AMBIGUOUS).split("|") for k in _expand(w)}
)
_SUFFIX_KEYS = tuple(k.replace("\\", "") for k in (_SUFFIX_TYPES[3:-1] + "|" + _TYPE_WORDS[3:-1]).split("|"))
_TOWN_HINT = re.compile(
    r",[^\n]{0,60}?(?<![\d.])(?:\d{4,8}|\d{3}[ \t]\d{2}|\d{2}-\d{3}|[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2})(?![.,]?\d)"
)

_TITLES = r"Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Madam|Dame|Herr|Frau|Fräulein|Mme|Mlle|Sr|Sra|Srta|Dña|Dott|Pani|Sig|Sig\.ra"
_PARTICLE = (
    r"(?:van|von|der|den|de|del|della|di|da|dos|das|do|du|des|la|le|ter|ten|zu|bin|ibn|binti|bint|al|el|af|av|"
    r"y|Mac|Mc|Nic|Ó|Ní|Ua|Uí|Van|Von|De|Del|Della|Di|Da|Dos|Du|La|Le|Al|El|Bin|Ibn|Abu|St\.?)"
)
# A name word: capitalised, with inner capitals (McGeady), an O' (O'Neill) or hyphenated parts (Jean-Pierre).
_TOKEN = (
    _UP + r"(?:['’]" + _UP + r")?" + _LO + r"+(?:" + _UP + _LO + r"+)?"
    + r"(?:(?:'|’)" + _UP + _LO + r"+|-" + _UP + r"?" + _LO + r"+(?:" + _UP + _LO + r"+)?)*(?!" + _LO + r")"
)  # fmt: skip
_GAP = r"[ \t]+(?:" + _PARTICLE + r"[ \t]+)*"
_NAME_SEQ = r"(?:(?:Ó|Ní|Mac|Mc|Nic|Ua|Van|Von|De|Di|Da|Del|La|Le|Al|El|Ibn|Bin|Abu)[ \t]+)?" + _TOKEN
_NAME_SEQ += r"(?:" + _GAP + _TOKEN + r"){0,3}"
_SIGN_OFF = (
    r"thanks(?: a lot| again| so much)?|thank you|many thanks|regards|kind regards|best regards|warm regards|"
    r"best wishes|best|cheers|sincerely|yours(?: truly| sincerely| faithfully)?|respectfully|love"
)
_FIELDS = (
    r"name|full name|student|pupil|parent|guardian|parent/guardian|tutor|teacher|author|cc|bcc|from|attn|"
    r"contact|contact person|sender|recipient|customer|client|patient|employee|signed"
)
_PERSON_TITLED = re.compile(
    r"(?<![\w.])(?:" + _TITLES + r")(?:\.[ \t]*|[ \t]+)(?:(?:Dr|Prof)\.?[ \t]+)?(" + _NAME_SEQ + r")"
)
_RELATIONS = (
    r"tutor|teacher|daughter|son|child|friend|colleague|classmate|student|mother|father|mom|dad|wife|husband|"
    r"partner|boss|manager|coach|neighbour|neighbor|sister|brother|cousin|aunt|uncle"
)


def _cue(pattern: str) -> re.Pattern:
    return re.compile(pattern + r"(" + _NAME_SEQ + r")")


# Each cue with the literal starts of its matches (in the lower-cased text): Python's re tries an
# alternation at every position, so the cues are matched only where str.find puts one of their starts.
# (Two cues are searched whole, only when their substring is there.)
_PERSON_CUES = (
    (("my name", "i am", "i'm", "this is", "call me", "dear"),
     _cue(r"(?i:\bmy name is[ \t]+|\bmy name's[ \t]+|\bI am[ \t]+|\bI'm[ \t]+|\bthis is[ \t]+|\bcall me[ \t]+|\bdear[ \t]+)")),
    (("hi", "hello", "hey"), _cue(r"(?i:\b(?:hi|hello|hey)[ \t]+)(?=" + _NAME_SEQ + r"[,!])")),
    (tuple(_FIELDS.split("|")), _cue(r"(?i:\b(?:" + _FIELDS + r")[ \t]*:[ \t]*)")),
    (("signed", "submitted", "written", "sent", "prepared", "checked", "reviewed", "forwarded", "on behalf"),
     _cue(r"(?i:\bsigned(?: by)?[ \t]*,?[ \t]*|\b(?:submitted|written|sent|prepared|checked|reviewed|forwarded) by[ \t]+"
          r"|\bon behalf of[ \t]+)")),
    (("thank", "many", "regards", "kind", "best", "warm", "cheers", "sincerely", "yours", "respectfully", "love"),
     _cue(r"(?i:\b(?:" + _SIGN_OFF + r")(?:[ \t]*[!,]?[ \t]*\n[ \t]*(?:--?[ \t]*)?|[ \t]*,?[ \t]*))")),
    # Weaker cues count only before a full name (two words or more).
    (("according to", "my ", "forwarded from", "ask"),
     re.compile(r"(?i:\baccording to[ \t]+|\bmy (?:" + _RELATIONS + r")[ \t]+|\bforwarded from[ \t]+|\bask[ \t]+)"
                r"(" + _TOKEN + r"(?:" + _GAP + _TOKEN + r"){1,3})")),
)  # fmt: skip
_TITLE_KEYS = tuple(t.replace("\\", "") for t in _TITLES.split("|"))
_PERSON_CUES_WHOLE = (
    (("--", "—", "–"), _cue(r"(?m:^[ \t]*(?:--|—|–)[ \t]*)")),
    (("wrote:",), re.compile(r"(?<![\w'’-])(" + _TOKEN + r"(?:" + _GAP + _TOKEN + r"){1,3})(?=[ \t]+wrote:)")),
)
_NAME_TOKEN = re.compile(_TOKEN)
_CAPITALISED = re.compile(_UP + _LO)


def _at_keys(pattern: re.Pattern, text: str, haystack: str, keys: tuple[str, ...]) -> list[re.Match]:
    """pattern.match at every place in `haystack` (`text`, or its lower-cased copy) where a key starts."""
    if len(haystack) != len(text):  # lower-casing moved the offsets ("İ"): search the whole text
        return list(pattern.finditer(text))
    found, tried = [], set()
    for key in keys:
        at = haystack.find(key)
        while at != -1:
            if at not in tried:
                tried.add(at)
                if m := pattern.match(text, at):
                    found.append(m)
            at = haystack.find(key, at + 1)
    return found


_NAME_GAP = re.compile(_GAP)
_CAP_PARTICLES = frozenset("Mac Mc Nic Van Von De Del Della Di Da Dos Du La Le Al El Bin Ibn Abu".split())
# Capitalised words that start sentences, fields and places; never a name's first or second word.
_NOT_A_NAME = frozenset(
    "The A An And But Or If Then So As At In On Of To For By With From Into Over Under After Before Since "
    "While When Where Which Who Whom Whose Why How What This That These Those There Here Each Every All Some "
    "Many Much Most More Less Few Both Either Neither Any No Not Yes Let Find Solve Now Next First Second "
    "Third Last Also Only Just Even Still Yet Thus Hence Therefore However Because Although Though Unless "
    "Until Once Twice Half One Two Three Four Five Six Seven Eight Nine Ten Hundred Thousand Million "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday Mondays Tuesdays Wednesdays Thursdays Fridays "
    "Saturdays Sundays January February March April May June July August September October November December "
    "Street Avenue Road Lane Drive Court Park Square Answer Question Step Total Sum Part Problem Solution "
    "Note Example Hint Check Final Result Sure Not Happy Glad Sorry Back Done Here Going Trying Stuck Fine "
    "Mr Mrs Ms Miss Dr Prof Sir Madam Dear Hi Hello Hey Thanks Thank Regards Best Cheers Kind Love Yours "
    "Mom Dad Mum Grandma Grandpa Aunt Uncle Teacher Student Class School Team Club City Town County State "
    "North South East West New Old Great Big Little Saint San Santa Los Las El La Le Lake Mount Cape Port "
    "Fort Bay Beach Island Hills Valley River National United Central Christmas Easter Halloween "
    "Thanksgiving Black Cyber Independence Memorial Labor Valentine Valentines Mother Father Day Eve Year "
    "Math Maths Algebra Science History English French Spanish German Italian Chinese Japanese Physics "
    "Prince Princess King Queen Duke Duchess Lord Lady Captain Pastor Farmer Coach Officer Chef Doctor "
    "Professor Judge Governor President Senator Mayor Sheriff Brother Sister General Sergeant Colonel Major "
    "Agent Detective Reverend Rabbi Imam Bishop Pope Emperor Empress Baron Count Countess Sultan Chief "
    "Principal Nurse Ville Fireman Firefighter Policeman Postman Mailman Grandpa Granny Nana Papa Mama".split()
)


_NUMBER_WORD = re.compile(
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|[-])+"
)


@lru_cache(maxsize=1)
def _names() -> dict[str, frozenset[str]]:
    """The sections of pii_names.txt (given, family, family_first, common, places; folded), read once."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in NAMES_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line:
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), set())
        elif current is None:
            raise ValueError(f"{NAMES_FILE}: name {line!r} before any [section] header")
        else:
            current.add(line)
    missing = {"given", "family", "family_first", "common", "places"} - set(sections)
    if missing:
        raise ValueError(f"{NAMES_FILE}: missing sections {sorted(missing)} (regenerate with tests/make_pii_names.py)")
    return {k: frozenset(v) for k, v in sections.items()}


@lru_cache(maxsize=65536)
def _fold(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).casefold()


def _names_in(text: str) -> list[tuple[int, int]]:
    """Full names without a cue: Given Surname, or Family Given where the family name comes first."""
    names = _names()
    given, family, family_first, common, places = (
        names[k] for k in ("given", "family", "family_first", "common", "places")
    )
    toks = [
        m
        for m in _NAME_TOKEN.finditer(text)
        if m.group() not in _CAP_PARTICLES and not text[m.start() - 1 : m.start()].isalpha()
    ]
    found: list[tuple[int, int]] = []
    i = 0
    while i < len(toks) - 1:
        a, b = toks[i], toks[i + 1]
        ga, gb = a.group(), b.group()
        i += 1
        if ga in _NOT_A_NAME or gb in _NOT_A_NAME:
            continue
        fa, fb = _fold(ga), _fold(gb)
        # "Mary Baker" yes, "Norman High School" and "Sally Thirtytwo" no; "Nguyễn Văn" yes
        if not (
            (fa in given and (fb in family or fb not in common) and not _NUMBER_WORD.fullmatch(fb))
            or (fa in family_first and fb in given)
        ) or not _NAME_GAP.fullmatch(text, a.end(), b.start()):
            continue
        stop = toks[i + 1].end() if i + 1 < len(toks) else b.end()
        if " ".join(_fold(text[a.start() : b.end()]).split()) in places or (
            " ".join(_fold(text[a.start() : stop]).split()) in places
        ):
            i += 1
            continue
        j = i
        while (
            j + 1 < len(toks)
            and j - i < 2
            and toks[j + 1].group() not in _NOT_A_NAME
            and (_fold(toks[j + 1].group()) in given or _fold(toks[j + 1].group()) in family)
            and _NAME_GAP.fullmatch(text, toks[j].end(), toks[j + 1].start())
        ):
            j += 1
        found.append((a.start(), toks[j].end()))
        i = j + 1
    return found


def _cued_name_end(text: str, start: int, stop: int) -> int | None:
    """Where the cued name in text[start:stop] ends: before its first word that is not part of a name."""
    words = list(_NAME_TOKEN.finditer(text, start, stop))
    if not words or words[0].group() in _NOT_A_NAME:
        return None
    end = words[0].end()
    for w in words[1:]:
        if w.group() in _NOT_A_NAME:
            break
        end = w.end()
    return end


# What RE2 must find in a row for a detector to have a chance: a superset of every pattern's trigger.
# Two parts: PREFILTER_NAMES, a capitalised word pair, can only start an uncued full name, so a row that
# only it matches needs nothing but the name-pair check; PREFILTER_OTHERS covers every other detector
# (structured shapes, street and town shapes, cues followed by a capital). Kept tight, so that most
# word-problem text and all of the playground's needs no Python at all.
_RE2_PARTICLES = (
    r"(?:(?:van|von|der|den|de|del|della|di|da|dos|das|do|du|des|la|le|ter|ten|zu|bin|ibn|binti|bint|al|el|af|"
    r"av|y)[ \t]+)*"
)
PREFILTER_NAMES = r"\p{Lu}\p{Ll}+[ \t]+" + _RE2_PARTICLES + r"\p{Lu}"
PREFILTER_OTHERS = (
    r"@|\d{3}[ .)-]+\d{3}|\d{3}-\d{2}-\d{4}|\d{4}[ -]\d{4}|\d{4}[ -]\d{6}|\d{9,}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
    r"|[A-Z]{2}\d{2}|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:|::[0-9A-Fa-f]|(?:^|[^\w+])\+\(?\d"
    # streets, and towns after them
    r"|\d[A-Za-z]?,?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:\p{Lu}\S*[ \t]+){1,3}" + _STREET + r"\b"
    r"|(?:" + _PREFIX_WORDS + r")[ \t]|(?:" + _PREFIX_AMBIGUOUS + r")[ \t]+(?:de|du|des|del|la|\p{Lu})|(?:" + _SUFFIX_TYPES + r"|" + _TYPE_WORDS + r")[ \t]+\d"
    r"|,[ \t]*(?:[A-Z]{1,2}-)?(?:\d{5}-?\d{3}|\d{4}-\d{3}|\d{2}-\d{3}|\d{3}[ \t]\d{2}|\d{4}[ \t]?[A-Z]{2}|\d{4,6}),?[ \t]+\p{Lu}"
    r"|,[ \t]*\p{Lu}[^\n,]*[ \t]\d{5,6}|\p{L}\)?,[ \t]*(?:[A-Z]{2}[ \t]+)?\d{5,6}|\p{L}-\d{5,6}"
    r"|[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}"
    # cued numbers
    r"|(?i:\b(?:" + _PHONE_CUES + r")\b)[^\n\d]{0,25}\d[\d ().\-/]{5,}\d"
    r"|(?i:ssn|social|ss#|ss no)[^\d]{0,40}\d{3}"
    # cued names
    r"|\b(?:" + _TITLES + r")\b|(?m:^[ \t]*(?:--|—|–)[ \t]*)\p{Lu}"
    r"|(?i:\b(?:my name is|my name's|i am|i'm|this is|call me|dear|hi|hello|hey|signed(?: by)?|on behalf of|"
    r"(?:submitted|written|sent|prepared|checked|reviewed|forwarded) by|according to|my (?:" + _RELATIONS + r")|"
    r"forwarded from|ask))[ \t]*,?[ \t]*\p{Lu}"
    r"|(?i:\b(?:" + _FIELDS + r"))[ \t]*:[ \t]*\p{Lu}"
    r"|(?i:\b(?:" + _SIGN_OFF + r"))[ \t]*[!,]?[ \t]*\n?[ \t]*(?:--?[ \t]*)?\p{Lu}"
    r"|[ \t]wrote:"
)  # fmt: skip
PREFILTER = PREFILTER_OTHERS + "|" + PREFILTER_NAMES


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


def _last_digit_end(text: str, start: int, end: int) -> int:
    while end > start and not text[end - 1].isdigit():
        end -= 1
    return end


def _spans(text: str, names: bool = True) -> list[Span]:
    found: list[Span] = []
    add = found.append
    for m in _EMAIL.finditer(text):
        add(Span(m.start(), m.end(), "EMAIL"))
    for m in _IBAN.finditer(text):
        if iban_ok(m.group()):
            add(Span(m.start(), m.end(), "IBAN"))
    for m in _CARD.finditer(text):
        value = m.group()
        if m.group(1) and not luhn_ok(re.sub(r"\D", "", value)):
            value = re.sub(r"[ -]\d{1,4}$", "", value)  # a grouped card followed by a short number (a CVV)
        digits = re.sub(r"\D", "", value)
        card_like = (
            bool(m.group(1)) or _card_issuer_ok(digits) or _CARD_CUE.search(text, max(0, m.start() - 30), m.start())
        )
        end = m.start() + len(value)
        if 13 <= len(digits) <= 19 and card_like and luhn_ok(digits) and not _arithmetic_context(text, m.start(), end):
            add(Span(m.start(), end, "CREDIT_CARD"))
    cued_ssns = set()
    for m in _SSN_CUED.finditer(text):
        if ssn_ok(m.group(1), m.group(3), m.group(4)):
            add(Span(m.start(1), m.end(4), "SSN"))
            cued_ssns.add(text[m.start(1) : m.end(4)])
    for value in cued_ssns:  # the same digits elsewhere, even in a sum, are the same SSN
        at = text.find(value)
        while at != -1:
            if not (text[at - 1 : at].isdigit() or text[at + len(value) : at + len(value) + 1].isdigit()):
                add(Span(at, at + len(value), "SSN"))
            at = text.find(value, at + len(value))
    for m in _SSN.finditer(text):
        if ssn_ok(*m.groups()) and not _arithmetic_context(text, m.start(), m.end()):
            add(Span(m.start(), m.end(), "SSN"))
    for m in _IPV4.finditer(text):
        if not _arithmetic_context(text, m.start(), m.end()):
            add(Span(m.start(), m.end(), "IP_ADDRESS"))
    for m in _IPV6.finditer(text):
        if m.group().count(":") >= 2 and any(c.isalpha() for c in m.group()) or "::" in m.group():
            add(Span(m.start(), m.end(), "IP_ADDRESS"))
    for m in _PHONE.finditer(text):
        end = _last_digit_end(text, m.start(), m.end())
        digits = sum(c.isdigit() for c in text[m.start() : end])
        if 7 <= digits <= 15 and not _arithmetic_context(text, m.start(), end):
            add(Span(m.start(), end, "PHONE"))
    low = text.lower()
    for m in _at_keys(_PHONE_CUED, text, low, _PHONE_CUE_KEYS):
        end = _last_digit_end(text, m.start(1), m.end(1))
        digits = sum(c.isdigit() for c in text[m.start(1) : end])
        if 7 <= digits <= 15 and not _arithmetic_context(text, m.start(1), end):
            add(Span(m.start(1), end, "PHONE"))
    addresses = list(_ADDRESS_EN.finditer(text)) + _at_keys(_ADDRESS_PREFIXED, text, text, _PREFIX_KEYS)
    if any(k in text for k in _SUFFIX_KEYS):
        addresses += _ADDRESS_SUFFIXED.finditer(text)
    if _TOWN_HINT.search(text):
        addresses += _ADDRESS_BEFORE_TOWN.finditer(text)
    for m in addresses:
        start = m.start()
        if m.re is _ADDRESS_PREFIXED and (before := _NUM_BEFORE.search(text, max(0, start - 20), start)):
            start = before.start()
        if any(c.isdigit() for c in text[start : m.end()]):  # a street name alone ("Place Vendôme") places nobody
            add(Span(start, m.end(), "ADDRESS"))
    if names and _CAPITALISED.search(text):
        cued = _at_keys(_PERSON_TITLED, text, text, _TITLE_KEYS)
        for keys, pattern in _PERSON_CUES:
            cued += _at_keys(pattern, text, low, keys)
        for keys, pattern in _PERSON_CUES_WHOLE:
            if any(k in text for k in keys):
                cued += pattern.finditer(text)
        for m in cued:
            end = _cued_name_end(text, m.start(1), m.end(1))
            if end is not None:
                add(Span(m.start(1), end, "PERSON"))
        for start, end in _names_in(text):
            add(Span(start, end, "PERSON"))
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
    return _apply(text, _spans(text, names))


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
    """Rows where any detector could fire (RE2, vectorised); the rest need no Python at all."""
    return [mode > 0 for mode in _row_modes(column, names=True)]


def _row_modes(column: pa.Array | pa.ChunkedArray, names: bool) -> list[int]:
    """Per row: 0 nothing can fire, 1 only an uncued full name can, 2 any detector can."""
    others = pc.fill_null(pc.match_substring_regex(column, PREFILTER_OTHERS), False).to_pylist()
    if not names:
        return [2 if o else 0 for o in others]
    pairs = pc.fill_null(pc.match_substring_regex(column, PREFILTER_NAMES), False).to_pylist()
    return [2 if o else int(p) for o, p in zip(others, pairs, strict=True)]


def _detect_in_mode(text: str, mode: int, names: bool) -> list[Span]:
    if mode == 2:
        return _spans(text, names)
    return _resolve([Span(start, end, "PERSON") for start, end in _names_in(text)])


def redact_rows(
    column: pa.Array | pa.ChunkedArray, names: bool = True, values: list[str | None] | None = None
) -> tuple[list[str | None], list[list[str]]]:
    """Redact a string column row by row: the new values and, per row, the types replaced.

    `values` is the column as a Python list when the caller already has it (saves converting twice).
    """
    modes = _row_modes(column, names)
    values = list(values if values is not None else column.to_pylist())
    kinds: list[list[str]] = [[] for _ in values]
    for i, mode in enumerate(modes):
        if mode and values[i] is not None:
            values[i], kinds[i] = _apply(values[i], _detect_in_mode(values[i], mode, names))
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
    modes = _row_modes(column, names)
    if any(modes):
        for value, mode in zip(column.to_pylist(), modes, strict=True):
            if mode and value is not None:
                counts.update(s.kind for s in _detect_in_mode(value, mode, names))
    return counts
