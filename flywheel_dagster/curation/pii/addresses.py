"""Street addresses in many countries' formats, with the postcode and town when they follow.

A street line has a street type in English, French, Spanish, Italian, Portuguese, German, Nordic, Dutch,
Slavic, Romanian, Indonesian or Vietnamese use, or a house number before a postcode and town. A street name
without a number places nobody and stays.
"""

from __future__ import annotations

import re

from flywheel_dagster.curation.pii.common import LETTER, LO, UP, Span, at_keys

_NUM = r"\d{1,5}[A-Za-z]?(?:[/-]\d{1,5}[A-Za-z]?)?"  # a house number: 12, 12a, 3/4, 46-32
_W = UP + LETTER + r"*(?:['’-]" + LETTER + r"+)*"  # a capitalised word of a street or town name
_CONNECT = (
    r"(?:de|del|della|dei|des|du|de la|la|le|les|di|da|das|dos|do|van|von|der|den|am|an|im|zum|zur|of|the|y|e|số)"
)
STREET = (
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
    r"\b" + _NUM + r",?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:" + _W + r"\.?[ \t]+){1,3}" + STREET + r"\b\.?" + _UNIT
    + r"(?:" + _US_TAIL + r"|" + _TAIL + r")?"
)  # fmt: skip
PREFIX_WORDS = (
    r"[Rr]ue|[Aa]venue|[Bb]oulevard|[Cc]hemin|[Aa]llée|[Ii]mpasse|[Qq]uai|"
    r"Calle|C/|Avenida|Avda\.|Av\.|Plaza|Paseo|Camino|Carrera|Glorieta|Ronda|Travesía|Cuesta|Acceso|Pasaje|Vial|"
    r"Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Contrada|Strada|Incrocio|Canale|Borgo|Rotonda|Stretto|"
    r"Rua|R\.|Travessa|Estrada|Ladeira|Alameda|Praça|Rodovia|Condomínio|Parque|"
    r"[Uu]lica|ul\.|[Aa]leja|al\.|[Pp]lac|pl\.|[Oo]siedle|os\.|"
    r"Intrarea|Str\.|Drumul|[SȘŞ]oseaua|Calea|Bulevardul|Splaiul|Aleea|Piața|Piata|"
    r"Jalan|Jl\.|Gang|Gg\.|Số|[Đđ]ường|[Pp]hố|Ngõ|Hẻm|Kiệt|Khu|Khóm|Ấp|Thôn|Xóm|Av|"
    r"Sokak|Sokağı|Caddesi|Cad\.|Mahallesi|Mah\."
)
PREFIX_AMBIGUOUS = r"[Rr]oute|[Cc]ours|[Pp]lace|C\."  # English words too ("in first place 20 points")


def _expand(word: str) -> list[str]:
    """The literal spellings of a word with [Xx] classes: "[Rr]ue" -> ["Rue", "rue"]."""
    m = re.search(r"\[([^\]]+)\]", word)
    if not m:
        return [word]
    return [v for c in m.group(1) for v in _expand(word[: m.start()] + c + word[m.end() :])]


_PREFIX_TYPES = (
    r"(?:" + PREFIX_WORDS + r"|(?:" + PREFIX_AMBIGUOUS + r")"
    r"(?=[ \t]+(?:de|du|des|del|la)\b|[ \t]+[A-ZÀ-Ý][a-zà-ÿ]{2}))"  # those only before a name
)
SUFFIX_TYPES = (
    r"(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|steig|markt|"
    r"gatan|vägen|gränd|torget|gade|vej|veien|vegen|gata|katu|polku|kuja|bulevardi|"
    r"laan|dreef|straat|singel|gracht|plein|kade|steeg)"
)
TYPE_WORDS = r"(?:ulica|utca|út|tér|trg|cesta|ulice|náměstí|nábřeží|třída|sokak|caddesi|bulvarı)"
# Continental: a prefix type ("12 rue de la Paix", "ul. Długa 5", "Jalan Merdeka No. 3") or a type-suffixed
# name ("Goethestraße 5", "Storgatan 3", "Molekova ulica 3b"), with the postcode and town when they follow.
_ADDRESS_PREFIXED = re.compile(
    r"(?<![\w.])" + _PREFIX_TYPES + r"[ \t]+(?:(?:" + _CONNECT + r"|" + _NOT_NO
    + _W + r"|\d{1,4}[a-z]?(?:/\d{1,4})*\.?)[ \t]+){0,4}" + r"(?:" + _NOT_NO + _W + r"|\d{1,3})"
    # the house number: "Via Roma, 10" or "Calle Mayor 5", but not the postcode of ", 75002 Paris"
    + r"(?:,[ \t]*\d{1,3}[A-Za-z]?(?:/\d{1,4})?(?!\d|-\d|[ \t]+" + _NOT_NO + UP + r")"
    + r"|[ \t]+(?:No\.?|Nr\.?|n[°º]|nº|số)?[ \t]*" + _NUM + r"\.?)?" + _UNIT
    + r"(?:,?[ \t]+" + _ADMIN + r"[ \t]+" + _TOWN + r")*(?:[ \t]+\d{5,6}\b)?"
    + r"(?:" + _TAIL + r")?"
)  # fmt: skip
_NUM_BEFORE = re.compile(r"(?<![\w/-])" + _NUM + r",?[ \t]+$")  # "8, rue Jeanne Henry"
_ADDRESS_SUFFIXED = re.compile(
    r"(?<![\w.])(?:(?:" + _W + r"[ \t]+){0,2}" + UP + LETTER + r"*" + SUFFIX_TYPES + r"|" + _W + r"[ \t]+"
    + TYPE_WORDS + r")(?<=\.|[^\W\d_])(?![^\W\d_])[ \t]+" + _NUM + r"\.?" + r"(?:" + _TAIL + r")?"
)  # fmt: skip
# Any street name and number before a town: "Libuňská 16, 300 08 Praha", "Lago das Neves, 38, Tres Marias,
# 56721-797 Sales", "793 Anderson Greens, Powellchester, M7 3DU".
_ADDRESS_BEFORE_TOWN = re.compile(
    r"(?<![\w.])" + _W + r"(?:[ \t]+(?:" + _W + r"|" + _CONNECT + r")){0,3}(?:[ \t]+" + LO + r"{2,}){0,2},?[ \t]+" + _NUM
    + r"\.?"
    + _TAIL
    + r"|\b" + _NUM + r",?[ \t]+(?:" + _W + r"[ \t]+){0,3}" + _W + _UNIT + r"(?:" + _US_TAIL + r"|" + _TAIL + r")"
)  # fmt: skip
# What must be in the text for each to be tried (see names._PERSON_CUES): its literal prefixes (matched only where
# they are), its suffixes, and for a town a comma with a postcode after it.
_PREFIX_KEYS = tuple(
    {k.replace("\\", "") for w in (PREFIX_WORDS + "|" + PREFIX_AMBIGUOUS).split("|") for k in _expand(w)}
)
_SUFFIX_KEYS = tuple(k.replace("\\", "") for k in (SUFFIX_TYPES[3:-1] + "|" + TYPE_WORDS[3:-1]).split("|"))
_TOWN_HINT = re.compile(
    r",[^\n]{0,60}?(?<![\d.])(?:\d{4,8}|\d{3}[ \t]\d{2}|\d{2}-\d{3}|[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2})(?![.,]?\d)"
)


def address_spans(text: str) -> list[Span]:
    """The addresses in `text`, overlapping, not yet resolved."""
    found: list[Span] = []
    add = found.append
    addresses = list(_ADDRESS_EN.finditer(text)) + at_keys(_ADDRESS_PREFIXED, text, text, _PREFIX_KEYS)
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
    return found
