"""Writes flywheel_dagster/curation/pii_names.txt: the given and family names the PII detector knows.

The source is the PyPI package `names-dataset` (MIT; first and last names with a popularity rank in
each of 105 countries, drawn from public social-network profiles). It is 55 MB and takes 3 GB of memory
to load, so it is a dev-time input, not a dependency: this script keeps the names ranked in the top
GIVEN_RANK (given) or FAMILY_RANK (family) of any country, in scripts with upper and lower case, and
drops what is also an everyday English word in maths text (any word GSM8K's train split writes in
lower case, e.g. "Will", "Rose", "Summer", "King"), since a capitalised common word at the start of a
sentence must not read as a name. Sections:
  [given], [family]   the names
  [family_first]      family names of cultures that write them first ("Nguyễn Văn An", "Deák Zoltán")
  [common]            that GSM8K vocabulary ("high", "times"): never the surname in "Norman High School"
  [places]            multi-word country and region names from pycountry ("sao paulo", "sri lanka"),
                      whose first word is often a given name somewhere
All are stored case- and accent-folded ("jurgen"), as the detector looks them up. Deterministic for
given names-dataset and pycountry versions.

    .venv/bin/pip install names-dataset==3.3.1   # brings pycountry
    .venv/bin/python tests/make_pii_names.py
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "flywheel_dagster" / "curation" / "pii_names.txt"
GSM8K_TRAIN = ROOT / "data" / "gsm8k" / "train.jsonl"
GIVEN_RANK = 600
FAMILY_RANK = 400
# Where the family name comes first ("Nguyễn Văn An", "Deák Zoltán"): their family names get a section
# of their own, read as "Family Given" only before a known given name.
FAMILY_FIRST = ("VN", "HU", "CN", "TW", "HK", "MO", "JP", "KR", "KH", "SG")
# Names that stay whatever GSM8K writes in lower case (common in English-speaking countries).
KEEP = set(
    "Mark Grace Rose Joy Hope Faith Will Bill Sue Dawn Amber Jack Frank Ruby Pearl Daisy Lily Violet Iris "
    "Jasmine Hunter Mason Carter Cooper Taylor Baker Miller Smith Young King Brown Green White Black Wood "
    "Bell Hill Ward Cook Gray Long Hall Moon Rich Price Page Lane Cross Fox Hart Love Bird Stone Park".split()
)
# Words that are never read as names, on top of GSM8K's lower-case vocabulary.
STOP = set(
    "The A An And But Or If Then So As At In On Of To For By With From Into Over Under After Before "
    "This That These Those There Here What When Where Which Who Why How Each Every All Some Many Much "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July "
    "August September October November December Street Avenue Road Lane Drive Answer Question Step Total "
    "Mr Mrs Ms Miss Dr Prof Sir Madam Dear Hi Hello Thanks Regards Best Cheers Yes No Not Let Find Solve "
    "Mom Dad Mum Grandma Grandpa Aunt Uncle Baby Teacher Student Class School Team Club City Town Park".split()
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


def fold(name: str) -> str:
    """The lookup key: case-folded, accents dropped ("Jürgen" -> "jurgen")."""
    return "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).casefold()


def lower_case_vocabulary() -> set[str]:
    words: dict[str, int] = {}
    for line in GSM8K_TRAIN.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            for w in _WORD.findall(row["question"] + " " + row["answer"]):
                if w.islower():
                    words[w] = words.get(w, 0) + 1
    return {w for w, n in words.items() if n >= 2}


def selected(table: dict[str, dict], max_rank: int, common: set[str], countries: tuple[str, ...] = ()) -> list[str]:
    out = set()
    for name, info in table.items():
        ranks = info.get("rank") or {}
        if countries:
            ranks = {c: r for c, r in ranks.items() if c in countries}
        if not ranks or min(ranks.values()) > max_rank or not _WORD.fullmatch(name) or len(name) < 2:
            continue
        if not name[0].isupper() or name in STOP:
            continue
        key = fold(name)
        if key in common and name not in KEEP:
            continue
        out.add(key)
    return sorted(out)


# Multi-word cities that are no region of their own in pycountry.
CITIES = [
    "Tel Aviv",
    "Kuala Lumpur",
    "Buenos Aires",
    "Hong Kong",
    "São Paulo",
    "Rio de Janeiro",
    "Cape Town",
    "Las Vegas",
    "Los Angeles",
    "San Francisco",
    "San Diego",
    "San Antonio",
    "San José",
    "Santo Domingo",
    "New Delhi",
    "Abu Dhabi",
    "Addis Ababa",
    "Dar es Salaam",
    "Ho Chi Minh",
    "Phnom Penh",
    "Kota Kinabalu",
    "Porto Alegre",
    "Belo Horizonte",
    "Mexico City",
    "Panama City",
    "Quezon City",
    "Sankt Petersburg",
    "Saint Petersburg",
    "Nizhny Novgorod",
    "Den Haag",
    "Frankfurt am Main",
    "Baden Baden",
    "La Paz",
    "Santa Cruz",
    "Salt Lake City",
    "Kansas City",
    "Oklahoma City",
    "Long Beach",
    "Palo Alto",
    "Hà Nội",
]


def places() -> list[str]:
    import pycountry

    names = {" ".join(fold(w) for w in _WORD.findall(c)) for c in CITIES}
    for entry in list(pycountry.countries) + list(pycountry.subdivisions):
        for attr in ("name", "common_name", "official_name"):
            value = getattr(entry, attr, None)
            words = _WORD.findall(value or "")
            if len(words) >= 2 and words[0][0].isupper():
                names.add(" ".join(fold(w) for w in words))
    return sorted(names)


def main() -> None:
    from names_dataset import NameDataset

    vocabulary = {fold(w) for w in lower_case_vocabulary()}
    common = vocabulary | {fold(w) for w in STOP}
    nd = NameDataset()
    given = selected(nd.first_names, GIVEN_RANK, common)
    family = selected(nd.last_names, FAMILY_RANK, common)
    family_first = selected(nd.last_names, FAMILY_RANK, common, FAMILY_FIRST)
    header = (
        "# Given and family names for flywheel_dagster/curation/pii.py, case- and accent-folded.\n"
        f"# Written by tests/make_pii_names.py from names-dataset (MIT): top {GIVEN_RANK} given and top\n"
        f"# {FAMILY_RANK} family names of each of its countries, less GSM8K's lower-case vocabulary;\n"
        f"# [family_first]: the family names among them of {', '.join(FAMILY_FIRST)}; [common]: that\n"
        "# vocabulary; [places]: multi-word country and region names (pycountry).\n"
    )
    sections = {
        "given": given,
        "family": family,
        "family_first": family_first,
        "common": sorted(w for w in vocabulary if len(w) >= 3),
        "places": places(),
    }
    OUT.write_text(header + "".join(f"[{k}]\n" + "\n".join(v) + "\n" for k, v in sections.items()), encoding="utf-8")
    counts = ", ".join(f"{len(v)} {k}" for k, v in sections.items())
    print(f"wrote {counts} names to {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
