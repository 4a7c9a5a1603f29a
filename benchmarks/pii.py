"""PII detector precision and recall per type on the labelled corpus, and on a fresh draw of it.

    .venv/bin/python benchmarks/pii.py

The corpus is tests/data/pii_corpus.jsonl (seed 7, the one the detector was tuned on); the fresh draw
uses the same generator with seed 8: the same formats and templates, new values and names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from make_pii_corpus import OUT, build
    from test_pii import scores

    from flywheel_dagster.curation.pii import PII_TYPES

    corpus = [json.loads(line) for line in OUT.read_text().splitlines()]
    fresh = build(seed=8)
    a, b = scores(corpus), scores(fresh)
    print(f"{'type':<12} {'spans':>5} {'precision':>9} {'recall':>7}   fresh draw: {'precision':>9} {'recall':>7}")
    for k in PII_TYPES:
        print(f"{k:<12} {a[k][2]:>5} {a[k][0]:>9.3f} {a[k][1]:>7.3f}   {'':>11} {b[k][0]:>9.3f} {b[k][1]:>7.3f}")
    print(f"records: {len(corpus)} ({sum(not r['spans'] for r in corpus)} look-alikes without PII)")


if __name__ == "__main__":
    main()
