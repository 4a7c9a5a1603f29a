"""PII detection against the labelled corpus (tests/data/pii_corpus.jsonl, made by tests/make_pii_corpus.py)."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from flywheel_dagster.curation import pii

CORPUS = Path(__file__).parent / "data" / "pii_corpus.jsonl"


def scores(records: list[dict]) -> dict[str, tuple[float, float, int]]:
    """Per type: (precision, recall, gold spans). A detection counts when it overlaps a gold span of its type."""
    tp, fp, gold = Counter(), Counter(), Counter()
    for r in records:
        found = pii.detect(r["text"])
        for g in r["spans"]:
            gold[g["type"]] += 1
            tp[g["type"]] += any(d.kind == g["type"] and d.start < g["end"] and d.end > g["start"] for d in found)
        for d in found:
            fp[d.kind] += not any(d.kind == g["type"] and d.start < g["end"] and d.end > g["start"] for g in r["spans"])
    return {k: (tp[k] / max(tp[k] + fp[k], 1), tp[k] / max(gold[k], 1), gold[k]) for k in pii.PII_TYPES}


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines()]


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 500
    kinds = Counter(s["type"] for r in corpus for s in r["spans"])
    assert set(kinds) == set(pii.PII_TYPES) and min(kinds.values()) >= 50
    assert sum(not r["spans"] for r in corpus) >= 100  # look-alikes without PII


def test_precision_and_recall_per_type(corpus):
    got = scores(corpus)
    for kind, (precision, recall, n) in got.items():
        assert precision >= 0.95, (kind, precision)
        if kind in pii.STRUCTURED_TYPES:
            assert recall >= 0.99, (kind, recall, n)
        else:
            assert recall >= 0.9, (kind, recall, n)


def test_values_with_other_numbers_still_match():
    """Fresh values from the same generator with another seed (the corpus formats, new numbers and names)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from make_pii_corpus import build

    got = scores(build(seed=8))
    assert all(p >= 0.95 for p, _, _ in got.values()), got
    assert all(got[k][1] >= 0.99 for k in pii.STRUCTURED_TYPES), got


def test_redaction_uses_typed_placeholders_and_keeps_the_maths():
    text = (
        "Hi, I'm Laura Chen (laura@example.com, +1 415 555 0132). Card 4111 1111 1111 1111.\n"
        "Step 1: 4532015112830366 + 1 = 4532015112830367. Step 2: 123-45-6789 is not arithmetic here.\n"
        "Step 3: 999999999 * 2 = 1999999998. #### 1999999998"
    )
    out, kinds = pii.redact(text)
    assert out == (
        "Hi, I'm <PERSON> (<EMAIL>, <PHONE>). Card <CREDIT_CARD>.\n"
        "Step 1: 4532015112830366 + 1 = 4532015112830367. Step 2: <SSN> is not arithmetic here.\n"
        "Step 3: 999999999 * 2 = 1999999998. #### 1999999998"
    )
    assert kinds == ["PERSON", "EMAIL", "PHONE", "CREDIT_CARD", "SSN"]


def test_checksums_reject_lookalikes():
    assert pii.detect("card 4111 1111 1111 1112") == []  # Luhn fails
    assert pii.detect("IBAN DE44500105175407324932") == []  # mod-97 fails
    assert pii.detect("SSN 000-12-3456") == []  # area 000 is never issued
    assert [s.kind for s in pii.detect("IBAN DE89 3704 0044 0532 0130 00")] == ["IBAN"]


def test_column_redaction_counts_and_skips_clean_rows():
    counts = Counter()
    col = pa.array(["7+5=12:2;4+8+1=13:32\nA:132", "mail me: a.b@c.io", None, "Q:47+85"])
    out = pii.redact_column(col, counts)
    assert out.to_pylist() == ["7+5=12:2;4+8+1=13:32\nA:132", "mail me: <EMAIL>", None, "Q:47+85"]
    assert counts == Counter({"EMAIL": 1})
    assert pii.count_detections(out) == Counter()


def test_the_prefilter_never_hides_a_detection(corpus):
    """Rows the RE2 pre-screen skips must be rows the detectors find nothing in (corpus + GSM8K text)."""
    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    texts = [r["text"] for r in corpus] + [p.prompt + p.solution for p in GSM8KTask().traffic(0, 2000)]
    texts += ["host ::1 is down", "fe80::1ff:fe23:4567:890a", "Regards,\nAnna", "SSN 123 45 6789", "+33 1 23 45 67 89"]
    mask = pii.candidate_mask(pa.array(texts))
    hidden = [t for t, m in zip(texts, mask, strict=True) if not m and pii.detect(t)]
    assert hidden == []
    assert sum(mask) < len(texts)  # and it does skip rows
