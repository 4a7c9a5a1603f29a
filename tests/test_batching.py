"""The harvest's bounded memos: they hold at most what they are sized for and keep the recent arguments."""

from __future__ import annotations

from flywheel_dagster.curation.batching import Memo


def test_a_memo_forgets_its_older_half_when_full():
    memo = Memo(4)
    for k in range(10):
        assert memo.keep(k, k * k) == k * k  # keep hands the value back, kept or not
        assert len(memo) <= 4
    # Full at 4: the oldest half goes (0 and 1 when 4 comes, 2 and 3 when 6 comes, ...): the newest remain.
    assert memo == {6: 36, 7: 49, 8: 64, 9: 81}
    assert memo.get(9) == 81 and memo.get(0) is None


def test_a_memo_is_bounded_by_the_weight_of_its_arguments():
    memo = Memo(1000, max_weight=10, weigh=len)
    for word in ("aaaa", "bbbb", "cc", "dddd", "eeeeeeee"):
        memo.keep(word, word.upper())
        assert memo.weight == sum(map(len, memo)) <= 10
    assert "eeeeeeee" in memo and "aaaa" not in memo
    memo.keep("eeeeeeee", "again")  # a key kept twice weighs once
    assert memo.weight == sum(map(len, memo)) and memo["eeeeeeee"] == "again"
    assert memo.keep("x" * 11, 1) == 1 and "x" * 11 not in memo  # heavier than the whole memo: not kept
