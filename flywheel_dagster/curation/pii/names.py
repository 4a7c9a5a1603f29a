"""Person names: after a cue (a title, a self-introduction, a sign-off, a `Name:` field) or as a full name.

A full name is a known given name followed by a capitalised surname, or a known family name of a
family-name-first culture followed by a known given name. Names are Unicode-aware (Latin, Greek, Cyrillic;
apostrophes, hyphens, particles such as "van der" or "Ó"); the given and family names are the multi-country
list in `curation/pii_names.txt` (written by `tests/make_pii_names.py`). A lone given name in a word problem
("Natalia sold 48 clips") identifies nobody and stays.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from flywheel_dagster.curation.pii.common import LO, UP, Span, at_keys

NAMES_FILE = Path(__file__).parent.parent / "pii_names.txt"

TITLES = r"Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Madam|Dame|Herr|Frau|Fräulein|Mme|Mlle|Sr|Sra|Srta|Dña|Dott|Pani|Sig|Sig\.ra"
_PARTICLE = (
    r"(?:van|von|der|den|de|del|della|di|da|dos|das|do|du|des|la|le|ter|ten|zu|bin|ibn|binti|bint|al|el|af|av|"
    r"y|Mac|Mc|Nic|Ó|Ní|Ua|Uí|Van|Von|De|Del|Della|Di|Da|Dos|Du|La|Le|Al|El|Bin|Ibn|Abu|St\.?)"
)
# A name word: capitalised, with inner capitals (McGeady), an O' (O'Neill) or hyphenated parts (Jean-Pierre).
_TOKEN = (
    UP + r"(?:['’]" + UP + r")?" + LO + r"+(?:" + UP + LO + r"+)?"
    + r"(?:(?:'|’)" + UP + LO + r"+|-" + UP + r"?" + LO + r"+(?:" + UP + LO + r"+)?)*(?!" + LO + r")"
)  # fmt: skip
_GAP = r"[ \t]+(?:" + _PARTICLE + r"[ \t]+)*"
_NAME_SEQ = r"(?:(?:Ó|Ní|Mac|Mc|Nic|Ua|Van|Von|De|Di|Da|Del|La|Le|Al|El|Ibn|Bin|Abu)[ \t]+)?" + _TOKEN
_NAME_SEQ += r"(?:" + _GAP + _TOKEN + r"){0,3}"
SIGN_OFF = (
    r"thanks(?: a lot| again| so much)?|thank you|many thanks|regards|kind regards|best regards|warm regards|"
    r"best wishes|best|cheers|sincerely|yours(?: truly| sincerely| faithfully)?|respectfully|love"
)
FIELDS = (
    r"name|full name|student|pupil|parent|guardian|parent/guardian|tutor|teacher|author|cc|bcc|from|attn|"
    r"contact|contact person|sender|recipient|customer|client|patient|employee|signed"
)
_PERSON_TITLED = re.compile(
    r"(?<![\w.])(?:" + TITLES + r")(?:\.[ \t]*|[ \t]+)(?:(?:Dr|Prof)\.?[ \t]+)?(" + _NAME_SEQ + r")"
)
RELATIONS = (
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
    (tuple(FIELDS.split("|")), _cue(r"(?i:\b(?:" + FIELDS + r")[ \t]*:[ \t]*)")),
    (("signed", "submitted", "written", "sent", "prepared", "checked", "reviewed", "forwarded", "on behalf"),
     _cue(r"(?i:\bsigned(?: by)?[ \t]*,?[ \t]*|\b(?:submitted|written|sent|prepared|checked|reviewed|forwarded) by[ \t]+"
          r"|\bon behalf of[ \t]+)")),
    (("thank", "many", "regards", "kind", "best", "warm", "cheers", "sincerely", "yours", "respectfully", "love"),
     _cue(r"(?i:\b(?:" + SIGN_OFF + r")(?:[ \t]*[!,]?[ \t]*\n[ \t]*(?:--?[ \t]*)?|[ \t]*,?[ \t]*))")),
    # Weaker cues count only before a full name (two words or more).
    (("according to", "my ", "forwarded from", "ask"),
     re.compile(r"(?i:\baccording to[ \t]+|\bmy (?:" + RELATIONS + r")[ \t]+|\bforwarded from[ \t]+|\bask[ \t]+)"
                r"(" + _TOKEN + r"(?:" + _GAP + _TOKEN + r"){1,3})")),
)  # fmt: skip
_TITLE_KEYS = tuple(t.replace("\\", "") for t in TITLES.split("|"))
_PERSON_CUES_WHOLE = (
    (("--", "—", "–"), _cue(r"(?m:^[ \t]*(?:--|—|–)[ \t]*)")),
    (("wrote:",), re.compile(r"(?<![\w'’-])(" + _TOKEN + r"(?:" + _GAP + _TOKEN + r"){1,3})(?=[ \t]+wrote:)")),
)
_NAME_TOKEN = re.compile(_TOKEN)
_CAPITALISED = re.compile(UP + LO)


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


def names_in(text: str) -> list[tuple[int, int]]:
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


def person_spans(text: str, low: str) -> list[Span]:
    """The person names in `text` (`low` is `text.lower()`), overlapping, not yet resolved."""
    found: list[Span] = []
    add = found.append
    if not _CAPITALISED.search(text):
        return found
    cued = at_keys(_PERSON_TITLED, text, text, _TITLE_KEYS)
    for keys, pattern in _PERSON_CUES:
        cued += at_keys(pattern, text, low, keys)
    for keys, pattern in _PERSON_CUES_WHOLE:
        if any(k in text for k in keys):
            cued += pattern.finditer(text)
    for m in cued:
        end = _cued_name_end(text, m.start(1), m.end(1))
        if end is not None:
            add(Span(m.start(1), end, "PERSON"))
    for start, end in names_in(text):
        add(Span(start, end, "PERSON"))
    return found
