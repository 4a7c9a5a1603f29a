"""KeyStore, the harvest's quarter state in bounded memory: against a Python dict (the oracle), with room in memory
for a few hundred keys so that most of the state lives on disk, spilled and merged as the store grows."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel_dagster.curation.keystore import BLOCK, MAX_DISK_RUNS, KeyStore


def _check(store: KeyStore, oracle: dict[int, int], queries: np.ndarray) -> None:
    found, values = store.find(queries)
    assert found.tolist() == [int(k) in oracle for k in queries]
    if values is not None:
        assert values.tolist() == [oracle.get(int(k), 0) for k in queries]


@pytest.mark.parametrize("values", [False, True], ids=["set", "map"])
@pytest.mark.parametrize("memory_keys", [BLOCK, 1000, 1 << 20], ids=["spills", "spills-less", "in-memory"])
def test_the_store_answers_as_a_dict_however_much_of_it_is_on_disk(values: bool, memory_keys: int) -> None:
    rng = np.random.default_rng(5)
    universe = rng.integers(0, 2**64, size=6000, dtype=np.uint64)
    universe[:3] = [0, 1, 2**64 - 1]  # the ends of the key space
    store, oracle = KeyStore(memory_keys, values=values), {}
    disk_runs = 0
    for _ in range(400):
        batch = rng.choice(universe, size=int(rng.integers(1, 120)))  # repeats inside a batch too
        _check(store, oracle, batch)
        found = store.find(batch)[0]
        # a set gets the keys it lacks (as the harvest adds them); a map rewrites values, the last one winning
        keys = batch if values else batch[~found]
        vals = rng.integers(0, 2**32, size=len(keys), dtype=np.uint64).astype(np.uint32) if values else None
        store.add(keys, vals)
        for i, k in enumerate(keys.tolist()):
            oracle[k] = int(vals[i]) if vals is not None else 0
        disk_runs = max(disk_runs, len(store._disk))
        assert len(store._disk) <= MAX_DISK_RUNS
        in_memory = sum(len(r.keys) for r in store._runs)
        assert in_memory <= memory_keys
    _check(store, oracle, universe)
    if memory_keys < 5000:
        # most of the state went to disk, and the runs there were merged (more than MAX_DISK_RUNS spills)
        assert store.spilled > len(oracle) and disk_runs == MAX_DISK_RUNS and store.compactions >= 1
        assert store.memory_bytes < memory_keys * 12 + len(oracle)
        folder = store._dir
        assert folder is not None and any(folder.iterdir())
        store.close()
        assert not folder.exists()
    else:
        assert store.spilled == 0 and store._dir is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 5, 2**64 - 1]), max_size=40),
        min_size=1,
        max_size=30,
    )
)
def test_the_store_answers_as_a_dict_for_any_keys(batches: list[list[int]]) -> None:
    store, oracle = KeyStore(BLOCK, values=True), {}
    for i, batch in enumerate(batches):
        keys = np.array(batch, dtype=np.uint64)
        _check(store, oracle, keys)
        store.add(keys, np.full(len(keys), i, dtype=np.uint32))
        oracle.update(dict.fromkeys(batch, i))
    _check(store, oracle, np.array(sorted(oracle) + [3, 2**63], dtype=np.uint64))


def test_spilled_state_is_removed_with_the_store_and_a_bad_size_is_named(tmp_path) -> None:  # noqa: ANN001
    store = KeyStore(BLOCK, spill_dir=str(tmp_path))
    store.add(np.arange(10 * BLOCK, dtype=np.uint64))
    assert store.find(np.array([0, 10 * BLOCK - 1, 10 * BLOCK], dtype=np.uint64))[0].tolist() == [True, True, False]
    assert len(list(tmp_path.iterdir())) == 1  # its folder, under spill_dir
    del store
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="memory_keys must be at least 256, got 10"):
        KeyStore(10)
    with pytest.raises(ValueError, match="values are required for a map"):
        KeyStore(BLOCK, values=True).add(np.array([1], dtype=np.uint64))


def test_memory_stays_bounded_while_the_disk_runs_merge() -> None:
    """50 times more keys than fit in memory, added a batch at a time: the most the store allocates at once
    (merges on disk included) stays far below the keys it holds (8 bytes each: 1.6 MB)."""
    import tracemalloc

    rng = np.random.default_rng(9)
    store = KeyStore(4096)
    tracemalloc.start()
    try:
        for _ in range(50):
            store.add(rng.integers(0, 2**64, size=4096, dtype=np.uint64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.compactions >= 5 and store.spilled > 50 * 4096
    assert peak < 600_000, peak
    assert store.find(rng.integers(0, 2**64, size=10, dtype=np.uint64))[0].sum() == 0  # still answers
    store.close()
