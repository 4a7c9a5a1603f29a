"""Writes tests/data/pii_corpus2.jsonl: a second labelled PII corpus, from other generators than the first.

The first corpus (make_pii_corpus.py) draws its values from a dozen names and a few formats written for
it, and the detector was tuned on it. This one takes its values from Faker's locale providers (names of
some forty locales with their diacritics, apostrophes, particles and hyphens; each locale's phone,
IBAN and address formats; every card type Faker knows) plus card numbers of issuers Faker lacks, and
sets them in other sentence frames (mails, forms, chat, sign-offs, parentheses, key=value, two-line
addresses) inside real GSM8K test problems. Its look-alikes are GSM8K test problems as they are (those
without a title such as "Mr.", whose titled names the detector redacts on purpose) and maths text with
dates, money, separators, times, ISBNs, place names and lone foreign given names: anything found in
them is a false positive. Same record format as the first corpus: {"id", "text", "spans": [...]}.

    .venv/bin/pip install faker                  # dev only: the tests read the written file
    .venv/bin/python tests/make_pii_corpus2.py   # rewrite the corpus (deterministic for a Faker version)
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

OUT = Path(__file__).parent / "data" / "pii_corpus2.jsonl"
GSM8K = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "test.jsonl"

# (locale, family name first): Latin-script and Greek/Cyrillic locales, Faker's own data.
NAME_LOCALES = [
    ("de_DE", False),
    ("de_AT", False),
    ("de_CH", False),
    ("fr_FR", False),
    ("fr_CA", False),
    ("es_ES", False),
    ("es_MX", False),
    ("it_IT", False),
    ("pt_BR", False),
    ("pt_PT", False),
    ("nl_NL", False),
    ("sv_SE", False),
    ("no_NO", False),
    ("da_DK", False),
    ("fi_FI", False),
    ("is_IS", False),
    ("pl_PL", False),
    ("cs_CZ", False),
    ("sk_SK", False),
    ("hr_HR", False),
    ("sl_SI", False),
    ("ro_RO", False),
    ("lt_LT", False),
    ("lv_LV", False),
    ("et_EE", False),
    ("tr_TR", False),
    ("az_AZ", False),
    ("yo_NG", False),
    ("ig_NG", False),
    ("ha_NG", False),
    ("en_NG", False),
    ("en_IN", False),
    ("en_IE", False),
    ("ga_IE", False),
    ("en_GB", False),
    ("en_KE", False),
    ("zu_ZA", False),
    ("id_ID", False),
    ("en_PK", False),
    ("vi_VN", True),
    ("hu_HU", True),
    ("ru_RU", False),
    ("uk_UA", False),
    ("el_GR", False),
]
ROMANIZED = ["zh_CN", "ja_JP"]  # romanized_name(): "Xiuying Chen", "Hiroshi Ikeda"
PHONE_LOCALES = [
    "de_DE",
    "de_AT",
    "de_CH",
    "fr_FR",
    "fr_CH",
    "es_ES",
    "it_IT",
    "pt_BR",
    "pt_PT",
    "nl_NL",
    "sv_SE",
    "no_NO",
    "da_DK",
    "fi_FI",
    "pl_PL",
    "cs_CZ",
    "sk_SK",
    "hr_HR",
    "sl_SI",
    "ro_RO",
    "hu_HU",
    "tr_TR",
    "vi_VN",
    "en_IN",
    "en_GB",
    "id_ID",
    "lt_LT",
    "lv_LV",
    "el_GR",
    "en_US",
    "ru_RU",
    "bg_BG",
    "az_AZ",
]
IBAN_LOCALES = [
    "de_DE",
    "de_AT",
    "de_CH",
    "fr_FR",
    "es_ES",
    "it_IT",
    "pt_PT",
    "pt_BR",
    "nl_NL",
    "no_NO",
    "da_DK",
    "fi_FI",
    "pl_PL",
    "cs_CZ",
    "sk_SK",
    "ro_RO",
    "tr_TR",
    "el_GR",
    "en_IE",
    "en_GB",
    "az_AZ",
]
ADDRESS_LOCALES = [
    "de_DE",
    "de_AT",
    "de_CH",
    "fr_FR",
    "fr_CH",
    "es_ES",
    "it_IT",
    "pt_PT",
    "pt_BR",
    "nl_NL",
    "sv_SE",
    "no_NO",
    "da_DK",
    "fi_FI",
    "pl_PL",
    "cs_CZ",
    "sk_SK",
    "sl_SI",
    "hu_HU",
    "ro_RO",
    "en_GB",
    "en_IE",
    "en_US",
    "id_ID",
    "vi_VN",
    "en_IN",
]
CARD_TYPES = ["amex", "diners", "discover", "jcb15", "jcb16", "mastercard", "visa13", "visa16", "visa19"]
# Issuers Faker has no provider for: (prefixes, lengths).
OTHER_ISSUERS = [
    (["62", "6212", "6282"], [16, 17, 18, 19]),  # UnionPay
    (["2200", "2201", "2202", "2204"], [16]),  # Mir
    (["5018", "5020", "5038", "6304", "6759", "6761"], [16, 19]),  # Maestro
    (["60", "6521", "81", "82"], [16]),  # RuPay
    (["506099", "506110", "650002"], [16, 19]),  # Verve
    (["9792"], [16]),  # Troy
    (["4"], [14, 15, 17, 18]),  # Visa-prefixed at lengths Visa does not issue
    (["51", "55", "2221"], [18, 19]),  # Mastercard-prefixed, the same
]


def luhn_complete(body: str) -> str:
    for check in string.digits:
        total = 0
        for i, ch in enumerate(reversed(body + check)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return body + check
    raise AssertionError("unreachable")


class Values:
    """PII values, each drawn from a Faker of a locale picked by the record's own random generator."""

    def __init__(self, seed: int) -> None:
        from faker import Faker

        self.rng = random.Random(seed)
        locales = sorted({loc for loc, _ in NAME_LOCALES} | set(ROMANIZED) | set(PHONE_LOCALES) | set(IBAN_LOCALES))
        self.fakers = {loc: Faker(loc) for loc in sorted(set(locales) | set(ADDRESS_LOCALES))}
        for i, f in enumerate(self.fakers.values()):
            f.seed_instance(seed * 1000 + i)

    def _f(self, locales: list[str]):  # noqa: ANN202 - a Faker
        return self.fakers[self.rng.choice(locales)]

    def person(self) -> tuple[str, str, str]:
        """(full name, given name, family name) in the locale's order."""
        if self.rng.random() < 0.08:
            f = self.fakers[self.rng.choice(ROMANIZED)]
            full = f.romanized_name()
            given, _, family = full.partition(" ")
            return full, given, family
        loc, family_first = self.rng.choice(NAME_LOCALES)
        f = self.fakers[loc]
        given = f.first_name()
        if loc == "vi_VN":  # Faker's vi_VN first_name() is English; the gendered lists are Vietnamese
            given = f"{f.middle_name()} {f.first_name_female() if self.rng.random() < 0.5 else f.first_name_male()}"
        family = f.last_name()
        if self.rng.random() < 0.15 and not family_first:
            given = f"{given} {f.first_name()}"  # a middle name
        full = f"{family} {given}" if family_first else f"{given} {family}"
        return full, given, family

    def email(self) -> str:
        f = self._f(PHONE_LOCALES)
        r = self.rng.random()
        if r < 0.1:
            return f"{f.user_name()}+{self.rng.choice(['math', 'hw', 'school'])}@{f.free_email_domain()}"
        if r < 0.15:
            return f.email().upper()
        if r < 0.2:
            return f"{self.rng.choice(['jürgen.müller', 'zoë.oneill', 'josé.garcía', 'şule.yılmaz'])}@{f.domain_name()}"
        return self.rng.choice([f.email(), f.free_email(), f.company_email(), f.ascii_safe_email()])

    def phone(self) -> str:
        f = self._f(PHONE_LOCALES)
        return f.phone_number()

    def card(self) -> str:
        if self.rng.random() < 0.55:
            digits = self.fakers["en_US"].credit_card_number(self.rng.choice(CARD_TYPES))
        else:
            prefixes, lengths = self.rng.choice(OTHER_ISSUERS)
            prefix, length = self.rng.choice(prefixes), self.rng.choice(lengths)
            digits = luhn_complete(
                prefix + "".join(self.rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
            )
        style = self.rng.random()
        if style < 0.25:
            return digits
        sep = self.rng.choice([" ", " ", "-"])
        if len(digits) == 15 and digits[:2] in ("34", "37"):
            return sep.join((digits[:4], digits[4:10], digits[10:]))
        if len(digits) == 14 and style < 0.4:
            return sep.join((digits[:4], digits[4:10], digits[10:]))
        return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))

    def ssn(self) -> str:
        raw = self.fakers["en_US"].ssn()
        return self.rng.choice([raw, raw, raw.replace("-", " "), raw.replace("-", "")])

    def ip(self) -> str:
        f = self.fakers["en_US"]
        return self.rng.choice(
            [f.ipv4_public(), f.ipv4_private(), f.ipv4(), f.ipv6(), f"2001:db8::{self.rng.randint(1, 0xFFFF):x}"]
        )

    def iban(self) -> str:
        raw = self._f(IBAN_LOCALES).iban()
        return raw if self.rng.random() < 0.4 else " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))

    def address(self) -> str:
        loc = self.rng.choice(ADDRESS_LOCALES)
        lines = [ln.strip().rstrip(",") for ln in self.fakers[loc].address().splitlines() if ln.strip()]
        return ", ".join(lines)


# Frames: (text before, text after) around the value; {given} / {family} fill name frames' other slots.
FRAMES = {
    "PERSON": [
        ("My name is ", ", I'm stuck on this one."),
        ("Hi! I'm ", " from class 7b. "),
        ("This is ", " again. "),
        ("Kind regards,\n", ""),
        ("Best wishes,\n", "\n"),
        ("Cheers, ", ""),
        ("Thanks a lot!\n-- ", ""),
        ("Student: ", "\n"),
        ("Parent/guardian: ", "\n"),
        ("Submitted by ", " on Monday. "),
        ("", " wrote:\n> "),
        ("Ask ", " if the units are right. "),
        ("My tutor ", " says it's 42. "),
        ("(checked by ", ")\n"),
        ("According to ", ", the answer key is wrong. "),
        ("", " and I both got 18. "),
        ("cc: ", "\n"),
        ("Author: ", "\n"),
        ("Forwarded from ", ". "),
        ("Sent on behalf of ", ".\n"),
        ("Tutor: ", ", grade 5\n"),
        ("Teacher ", " marked it wrong. "),
        ("Hello, my name's ", " and "),
        ("I am ", ", a parent. "),
        ("Signed: ", "\n"),
        ("Name: ", " | Class: 6\n"),
        ("Call me ", ". "),
        ("My daughter ", " got 12. "),
        ("Please give this to ", " tomorrow. "),
    ],
    "PERSON_TITLED": [
        ("Dear Mr. ", ",\n"),
        ("Dear Ms. ", ",\n"),
        ("Herr ", " says "),
        ("Frau ", " says "),
        ("Mme ", " dit "),
        ("Dr. ", " checked this. "),
        ("Prof. ", " set this problem. "),
        ("Sr. ", " pregunta: "),
    ],
    "EMAIL": [
        ("Email: ", "\n"),
        ("mail me at ", " please. "),
        ("<", ">\n"),
        ("reply-to: ", "\n"),
        ("(", ") "),
        ("Write to ", " if stuck. "),
        ("contact=", "; "),
        ("my address is ", ". "),
        ("mailto:", " "),
        ("Send it to ", ".\n"),
    ],
    "PHONE": [
        ("Tel: ", "\n"),
        ("Tel. ", " "),
        ("call me on ", " after 6. "),
        ("my mobile is ", ". "),
        ("(phone ", ")\n"),
        ("Phone: ", " | "),
        ("WhatsApp ", " anytime. "),
        ("ring me at ", ". "),
        ("Mobile: ", "\n"),
        ("reach me at ", ", thanks. "),
        ("Telefon: ", "\n"),
        ("phone number ", ". "),
        ("my cell: ", "\n"),
        ("(tel. ", ") "),
        ("text me at ", ". "),
        ("Fax: ", "\n"),
        ("call ", " to confirm. "),
    ],
    "CREDIT_CARD": [
        ("card: ", "\n"),
        ("Visa ", " exp 09/27. "),
        ("CC#: ", "\n"),
        ("paid with my card ", ". "),
        ("(card ", ")\n"),
        ("Kreditkarte ", " "),
        ("carte bancaire ", ". "),
        ("tarjeta ", ". "),
        ("credit card number ", ", cvv 123. "),
        ("charge it to ", ". "),
        ("my card is ", ". "),
    ],
    "SSN": [
        ("SSN: ", "\n"),
        ("my SSN is ", ". "),
        ("Social Security number ", " "),
        ("SSN# ", "\n"),
        ("(SSN ", ") "),
        ("social security no. ", ". "),
        ("ssn=", "; "),
        ("My social security number is ", ", for the form. "),
        ("ID on file: ", ". "),
    ],
    "IP_ADDRESS": [
        ("from IP ", ". "),
        ("host=", " "),
        ("(client ", ")\n"),
        ("X-Forwarded-For: ", "\n"),
        ("my IP: ", ", "),
        ("the server ", " timed out. "),
        ("connect to ", " port 22. "),
        ("IP address ", " is blocked. "),
    ],
    "IBAN": [
        ("IBAN: ", "\n"),
        ("IBAN ", ", BIC below. "),
        ("pay into ", " please. "),
        ("account ", " (savings). "),
        ("Kontonummer ", "\n"),
        ("(", ")\n"),
        ("bank: ", "; "),
    ],
    "ADDRESS": [
        ("I live at ", ". "),
        ("Address: ", "\n"),
        ("send it to ", ", thanks. "),
        ("Anschrift: ", "\n"),
        ("(", ")\n"),
        ("our school: ", ". "),
        ("deliver to ", " before noon. "),
        ("Adresse : ", "\n"),
    ],
}
KINDS = ["EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN", "ADDRESS", "PERSON"]


def gsm8k_problems() -> list[dict[str, str]]:
    """GSM8K test problems without titled names, calculator annotations dropped (the text a trace shows)."""
    rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
    titled = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam)\b")
    out = []
    for r in rows:
        answer = re.sub(r"<<[^>]*>>", "", r["answer"])
        if not titled.search(r["question"] + answer):
            out.append({"question": r["question"], "answer": answer})
    return out


def pii_record(rng: random.Random, values: Values, problems: list[dict[str, str]], kind: str) -> dict:
    p = rng.choice(problems)
    q, a = p["question"], p["answer"]
    if kind == "PERSON":
        full, given, family = values.person()
        if rng.random() < 0.15:
            before, after = rng.choice(FRAMES["PERSON_TITLED"])
            value = family
        else:
            before, after = rng.choice(FRAMES["PERSON"])
            value = full
    else:
        value = getattr(values, {"IP_ADDRESS": "ip", "CREDIT_CARD": "card"}.get(kind, kind.lower()))()
        before, after = rng.choice(FRAMES[kind])
        if kind == "SSN" and "SSN" not in before.upper() and "SOCIAL" not in before.upper():
            digits = re.sub(r"\D", "", value)
            value = f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"  # without a cue, only the dashed form reads as an SSN
    spans = []
    where = rng.random()
    if where < 0.4:  # in the question
        text = before + value + after + q + "\n" + a
        at = len(before)
    elif where < 0.7:  # after the question, before the solution
        head = q + "\n" + before
        text = head + value + after + "\n" + a
        at = len(head)
    else:  # after the answer
        head = q + "\n" + a + "\n\n" + before
        text = head + value + after
        at = len(head)
    spans.append({"start": at, "end": at + len(value), "type": kind})
    if kind == "SSN" and before != "ID on file: " and rng.random() < 0.3:
        # A cued SSN again later in a step of maths: still the SSN, and it must not survive there either.
        tail = f"\nCheck digits: {value} + 1 is not needed."
        spans.append(
            {
                "start": len(text) + len("\nCheck digits: "),
                "end": len(text) + len("\nCheck digits: ") + len(value),
                "type": kind,
            }
        )
        text += tail
    return {"text": text, "spans": spans}


PLACES = [
    "New York",
    "São Paulo",
    "Buenos Aires",
    "Hong Kong",
    "Costa Rica",
    "Los Angeles",
    "Rio de Janeiro",
    "El Salvador",
    "Sri Lanka",
    "Saint Petersburg",
    "Kuala Lumpur",
    "Cape Town",
    "Tel Aviv",
    "Las Vegas",
]
THINGS = [
    "Black Friday",
    "Christmas Eve",
    "Math Olympiad",
    "Happy Birthday",
    "Grand Canyon",
    "Mount Everest",
    "Lake Victoria",
    "Summer Camp",
    "Science Fair",
    "World Cup",
    "Super Bowl",
    "Earth Day",
    "New Year",
]


def lookalike(rng: random.Random, values: Values) -> dict:
    """Maths text with dates, money, separators, times, codes, places and lone given names: no PII."""
    a, b, c = rng.randint(101, 999), rng.randint(11, 99), rng.randint(2, 9)
    big = rng.randint(10**6, 10**8)
    given = values.person()[1].split()[0]
    place, thing = rng.choice(PLACES), rng.choice(THINGS)
    card_like = luhn_complete("4" + "".join(rng.choice(string.digits) for _ in range(14)))
    nine = rng.randint(10**8, 10**9 - 1)
    d, m, y = rng.randint(1, 28), rng.randint(1, 12), rng.randint(1990, 2030)
    templates = [
        f"{given} sold {a} cupcakes on {d:02d}.{m:02d}.{y} and {b} more the next day. {a} + {b} = {a + b}.\n#### {a + b}",
        f"The trip to {place} costs ${big:,}.00 for {c} people, so each pays ${big / c:,.2f}.\n#### {big / c:.2f}",
        f"{given} and {values.person()[1].split()[0]} share {a * c} stickers: {a * c} / {c} = {a} each.\n#### {a}",
        f"On {m:02d}/{d:02d}/{y} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} the "
        f"{thing} started; it lasted {c} hours.\n#### {c}",
        f"The bill was €{big:,}".replace(",", ".") + f",{b} and they split it {c} ways.\n#### {big / c:.2f}",
        f"{big:,}".replace(",", " ") + f" × {c} = " + f"{big * c:,}".replace(",", " ") + f"\n#### {big * c}",
        f"Tickets for the {thing} in {place}: {a} sold at ${b} each, {a} * {b} = {a * b}.\n#### {a * b}",
        f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(0, 9)} has "
        f"{a} pages; {c} chapters of {a // c} pages.\n#### {a // c}",
        f"{card_like} - 1 = {int(card_like) - 1}\n#### {int(card_like) - 1}",
        f"{nine} / {c} = {nine / c:.3f}, so about {nine // c} per group.\n#### {nine // c}",
        f"Step 1: {a}-{b}-{c} means {a} - {b} - {c} = {a - b - c}.\n#### {a - b - c}",
        f"{given}'s score went from {a} to {a + b}, a rise of {b / a:.2%}.\n#### {b}",
        f"The population of {place} grew from {big:,} to {big + a * 1000:,} (+{a * 1000:,}).\n#### {a * 1000}",
        f"Time: {rng.randint(1, 12)}:{rng.randint(10, 59)} pm. Ratio 3:4:5:6. Version {c}.{b}.{a}.\n#### {c}",
        f"{given} walks {a} m from Main Street to the park, then {b} m back: {a} - {b} = {a - b}.\n#### {a - b}",
        f"A {c}-digit code: {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}, the sum of its digits is odd.\n#### 1",
        f"Room {a}, floor {c}: {a} + {c} = {a + c}.\n#### {a + c}",
        f"In {y}, {given} bought {b} books at {c},{b:02d} € each: {b} × {c}.{b:02d} = {b * (c + b / 100):.2f} €.",
        f"{a}{b}{c}{a}{b}{c} is divisible by {c}: {int(f'{a}{b}{c}{a}{b}{c}')} / {c} = {int(f'{a}{b}{c}{a}{b}{c}') / c:.1f}",
        f"Phone numbers have 10 digits; {given} knows {c} of them, so {10 - c} are missing.\n#### {10 - c}",
    ]
    return {"text": rng.choice(templates), "spans": []}


def build(n_pii: int = 800, n_lookalike: int = 140, n_gsm8k: int = 160, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    values = Values(seed)
    problems = gsm8k_problems()
    # 40 of each kind, then more names than the rest: they are the class with the most variety.
    weights = [1, 1, 1, 1, 1, 1, 1.2, 5]
    kinds = [k for k in KINDS for _ in range(40)] + rng.choices(KINDS, weights=weights, k=n_pii - 40 * len(KINDS))
    records = [pii_record(rng, values, problems, k) for k in kinds]
    for _ in range(60):  # two kinds in one text
        first = pii_record(rng, values, problems, rng.choice(KINDS))
        second = pii_record(rng, values, problems, rng.choice(KINDS))
        shift = len(first["text"]) + 1
        records.append(
            {
                "text": first["text"] + "\n" + second["text"],
                "spans": first["spans"]
                + [{**s, "start": s["start"] + shift, "end": s["end"] + shift} for s in second["spans"]],
            }
        )
    records += [lookalike(rng, values) for _ in range(n_lookalike)]
    records += [{"text": p["question"] + "\n" + p["answer"], "spans": []} for p in rng.sample(problems, n_gsm8k)]
    return [{"id": i, **r} for i, r in enumerate(records)]


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = build()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} records to {OUT}")
