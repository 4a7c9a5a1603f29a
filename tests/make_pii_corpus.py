"""Writes tests/data/pii_corpus.jsonl: reasoning-style records with labelled PII spans, and look-alikes.

Each record is {"id", "text", "spans": [{"start", "end", "type"}]}. PII values are synthetic (generated
with valid checksums where the type has one) and sit inside realistic user questions and worked
solutions; the look-alikes (arithmetic on long numbers, decimals, dates, times, lone given names in
word problems) carry no spans, so anything detected in them is a false positive.

    python tests/make_pii_corpus.py            # rewrite the corpus (deterministic)
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

OUT = Path(__file__).parent / "data" / "pii_corpus.jsonl"

FIRST = ["Laura", "Michael", "Sofia", "James", "Priya", "Olivia", "Carlos", "Emma", "David", "Hannah", "Wei", "Ahmed"]
LAST = ["Chen", "Rossi", "Okafor", "Schmidt", "Novak", "Patel", "Garcia", "Kowalski", "Brennan", "Lindqvist"]
STREETS = ["Maple", "Oak", "Pennsylvania", "Baker", "Evergreen", "Sunset", "Lincoln", "Cedar Hill", "Main"]
STREET_TYPES = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Lane", "Drive", "Terrace", "Court"]
CITIES = [
    ("Springfield", "IL", "62704"),
    ("Austin", "TX", "73301"),
    ("Portland", "OR", "97201"),
    ("Boston", "MA", "02108"),
]
DOMAINS = ["gmail.com", "example.org", "mail.company.co.uk", "uni-bonn.de", "outlook.com", "proton.me"]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def iban(country: str, length: int, rng: random.Random) -> str:
    bban = "".join(rng.choice(string.digits) for _ in range(length - 4))
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    return f"{country}{check:02d}{bban}"


def email(rng: random.Random) -> str:
    f, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower()
    user = rng.choice([f"{f}.{last}", f"{f[0]}{last}{rng.randint(1, 99)}", f"{f}_{last}+math", f"{f.upper()}"])
    return f"{user}@{rng.choice(DOMAINS)}"


def phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [
            f"({a}) {b}-{c:04d}",
            f"{a}-{b}-{c:04d}",
            f"{a}.{b}.{c:04d}",
            f"+1 {a} {b} {c:04d}",
            f"+44 20 {rng.randint(7000, 8999)} {c:04d}",
            f"+49 30 {rng.randint(100000, 999999)}",
            f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        ]
    )


def card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mc", "amex", "disc"])
    if kind == "amex":
        d = luhn_complete(rng.choice(["34", "37"]), 15, rng)
        return rng.choice([f"{d[:4]} {d[4:10]} {d[10:]}", d])
    d = luhn_complete({"visa": "4", "mc": str(rng.randint(51, 55)), "disc": "6011"}[kind], 16, rng)
    sep = rng.choice([" ", "-", ""])
    return sep.join(d[i : i + 4] for i in range(0, 16, 4))


def ssn(rng: random.Random) -> tuple[str, str]:
    a, g, s = rng.randint(1, 665), rng.randint(1, 99), rng.randint(1, 9999)
    return rng.choice(
        [
            ("", f"{a:03d}-{g:02d}-{s:04d}"),
            ("SSN ", f"{a:03d} {g:02d} {s:04d}"),
            ("social security number is ", f"{a:03d}{g:02d}{s:04d}"),
        ]
    )


def ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    return rng.choice([":".join(groups), f"2001:db8::{groups[0]}:{groups[1]}", f"fe80::{groups[2]}"])


def address(rng: random.Random) -> str:
    base = f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(STREET_TYPES)}"
    r = rng.random()
    if r < 0.3:
        city, st, z = rng.choice(CITIES)
        return f"{base}, {city}, {st} {z}"
    if r < 0.5:
        return f"{base}, Apt {rng.randint(1, 40)}{rng.choice('ABC')}"
    return base


def person(rng: random.Random) -> tuple[str, str, str]:
    """(text before, the name, text after): the name is labelled, the cue is not."""
    f, last = rng.choice(FIRST), rng.choice(LAST)
    return rng.choice(
        [
            ("Hi, my name is ", f"{f} {last}", " and I need help with this."),
            ("Hello, I'm ", f"{f} {last}", ", a teacher."),
            ("Please forward to Dr. ", last, " when solved."),
            ("Thanks,\n", f, ""),
            ("Name: ", f"{f} {last}", "\n"),
            ("My colleague ", f"{f} {last}", " says the answer is wrong."),
            ("Regards, ", f"{f} {last}", ""),
        ]
    )


QUESTIONS = [
    "A baker makes {a} loaves a day and sells {b}. How many are left after {c} days?",
    "What is {a} + {b}?",
    "If a train travels {a} km in {c} hours, what is its speed?",
    "Compute {a} * {c}.",
]
SOLUTIONS = [
    "Each day {a} - {b} = {d} loaves are left, so over {c} days {d} * {c} = {e}.\n#### {e}",
    "{a} + {b} = {f}.\nThe answer is {f}.",
    "Speed = {a} / {c} = {g} km/h.\n#### {g}",
    "{a} * {c} = {h}.\n#### {h}",
]


def _numbers(rng: random.Random) -> dict[str, int]:
    a, b, c = rng.randint(20, 900), rng.randint(1, 19), rng.randint(2, 9)
    return {"a": a, "b": b, "c": c, "d": a - b, "e": (a - b) * c, "f": a + b, "g": a // c, "h": a * c}


def pii_record(rng: random.Random, kind: str) -> dict:
    nums = _numbers(rng)
    q = rng.choice(QUESTIONS).format(**nums)
    sol = rng.choice(SOLUTIONS).format(**nums)
    if kind == "PERSON":
        pre, value, post = person(rng)
        before, after = pre, post
    else:
        cue = ""
        if kind == "SSN":
            cue, value = ssn(rng)
        else:
            makers = {"EMAIL": email, "PHONE": phone, "CREDIT_CARD": card, "IP_ADDRESS": ip, "ADDRESS": address}
            value = makers[kind](rng) if kind in makers else ""
        if kind == "IBAN":
            country, length = rng.choice([("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18)])
            raw = iban_gb(rng) if country == "GB" else iban(country, length, rng)
            value = raw if rng.random() < 0.5 else " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))
        lead = {
            "EMAIL": ["Send the result to ", "Contact: ", "my email is ", "(reply to "],
            "PHONE": ["Call me at ", "Phone: ", "text me on ", "my number is "],
            "CREDIT_CARD": ["I paid with card ", "Card number: ", "charged to "],
            "SSN": ["For the tax form, " + cue, "My " + cue if cue else "ID on file: "],
            "IP_ADDRESS": ["The request came from ", "server at ", "my IP is "],
            "IBAN": ["Transfer to IBAN ", "Account: ", "pay into "],
            "ADDRESS": ["I live at ", "Ship it to ", "Our office is at "],
        }[kind]
        before, after = rng.choice(lead), rng.choice([". ", ", thanks. ", ")\n", " - "])
    where = rng.choice(["question", "reasoning", "answer"])
    spans = []
    if where == "question":
        text_before = before
        text = text_before + value + after + q + "\n" + sol
        spans.append({"start": len(text_before), "end": len(text_before) + len(value), "type": kind})
    elif where == "reasoning":
        head = q + "\n" + sol.split("\n")[0] + " (as " + before.strip().rstrip(",:") + " "
        text = head + value + ") " + "\n".join(sol.split("\n")[1:])
        spans.append({"start": len(head), "end": len(head) + len(value), "type": kind})
    else:
        head = q + "\n" + sol + "\n" + before
        text = head + value + after
        spans.append({"start": len(head), "end": len(head) + len(value), "type": kind})
    return {"text": text, "spans": spans}


def iban_gb(rng: random.Random) -> str:
    bban = "NWBK" + "".join(rng.choice(string.digits) for _ in range(14))
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "GB00")) % 97
    return f"GB{check:02d}{bban}"


def lookalike(rng: random.Random) -> dict:
    """Text with long numbers, decimals, dates, times and given names, and no PII."""
    big = luhn_complete("4", 16, rng)
    n = rng.randint(10**9, 10**10 - 1)
    a, b = rng.randint(100, 999), rng.randint(10, 99)
    templates = [
        f"Add one to {big}: {big} + 1 = {int(big) + 1}.\n#### {int(big) + 1}",
        f"{n} * 3 = {n * 3}, so the product is {n * 3}.\n#### {n * 3}",
        f"Step 1: {a}-{b}-{a - b} is not a pattern; {a} - {b} = {a - b}.\n#### {a - b}",
        f"The ratio is 3:4:5 and the time was 12:30 on 2024-03-15.\n#### {a}",
        f"Natalia sold {b} clips in April, and then she sold half as many in May. {b} / 2 = {b / 2}.",
        f"Version 3.14 of the formula gives 2.718 * {b} = {2.718 * b:.3f}.\n#### {2.718 * b:.3f}",
        f"Betty needs {a} dollars. She has half, {a / 2}. Her parents give {b}, so {a} - {a / 2} - {b} = {a / 2 - b}.",
        f"{a}{b}{a}{b} / {b} = {int(f'{a}{b}{a}{b}') / b:.2f}, rounded down {int(f'{a}{b}{a}{b}') // b}.",
        f"Q:{a}+{b}\n{a % 10}+{b % 10}={a % 10 + b % 10}:{(a + b) % 10};{a // 10 % 10}+{b // 10}:{(a + b) % 100}\nA:{a + b}",
        f"Call the first number x and the second y: x = {a}, y = {b}, x * y = {a * b}.\n#### {a * b}",
        f"James has {a} marbles and Mary has {b}. Together they have {a + b}.\n#### {a + b}",
        f"The answer is {n}.\n#### {n}",
        f"Phase 2: 555 - 123 - 4567 = {555 - 123 - 4567}.\n#### {555 - 123 - 4567}",
        f"The invoice says {a}.{b}{a % 10}.{b}{a % 10},50 EUR, that is {a * 1000 + b} euros in total.",
    ]
    return {"text": rng.choice(templates), "spans": []}


def build(n_pii: int = 480, n_lookalike: int = 160, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    kinds = ["EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS", "IBAN", "ADDRESS", "PERSON"]
    records = [pii_record(rng, kinds[i % len(kinds)]) for i in range(n_pii)]
    # Some records carry two kinds at once.
    for i in range(0, 80):
        first = pii_record(rng, kinds[i % len(kinds)])
        second = pii_record(rng, kinds[(i + 3) % len(kinds)])
        shift = len(first["text"]) + 1
        records.append(
            {
                "text": first["text"] + "\n" + second["text"],
                "spans": first["spans"]
                + [{**s, "start": s["start"] + shift, "end": s["end"] + shift} for s in second["spans"]],
            }
        )
    records += [lookalike(rng) for _ in range(n_lookalike)]
    return [{"id": i, **r} for i, r in enumerate(records)]


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = build()
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} records to {OUT}")
