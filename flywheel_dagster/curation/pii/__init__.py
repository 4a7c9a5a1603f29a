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
der" or "Ó"); the given and family names are the multi-country list in `curation/pii_names.txt` (written by
`tests/make_pii_names.py`). A lone given name in a word problem ("Natalia sold 48 clips") identifies
nobody and stays.

The package's modules, one job each: `structured` (patterns and checksums), `addresses`, `names` (person
names and their name lists), `prefilter` (the RE2 row filter) and `redaction` (detect, redact, count).
Most text has no PII, so `redact_rows` first asks Arrow's RE2 engine which rows could hold any
(vectorised) and runs the Python detectors on those rows only.
"""

from flywheel_dagster.curation.pii.common import PII_TYPES, STRUCTURED_TYPES, Span
from flywheel_dagster.curation.pii.names import NAMES_FILE
from flywheel_dagster.curation.pii.prefilter import PREFILTER, PREFILTER_NAMES, PREFILTER_OTHERS
from flywheel_dagster.curation.pii.redaction import (
    candidate_mask,
    count_detections,
    detect,
    known_values,
    pair_ok,
    redact,
    redact_column,
    redact_known,
    redact_rows,
    redact_texts,
)
from flywheel_dagster.curation.pii.structured import iban_ok, luhn_ok, ssn_ok

__all__ = [
    "NAMES_FILE",
    "PII_TYPES",
    "PREFILTER",
    "PREFILTER_NAMES",
    "PREFILTER_OTHERS",
    "STRUCTURED_TYPES",
    "Span",
    "candidate_mask",
    "count_detections",
    "detect",
    "known_values",
    "iban_ok",
    "pair_ok",
    "luhn_ok",
    "redact",
    "redact_column",
    "redact_known",
    "redact_rows",
    "redact_texts",
    "ssn_ok",
]
