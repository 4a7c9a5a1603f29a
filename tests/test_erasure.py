"""Erasure's lake rewrite on its own (the whole request, logs and audit included, is in test_harvest_cycle.py)."""

import pyarrow as pa
import pytest

from flywheel_dagster import erasure
from flywheel_dagster.traces.lake import Lake

Q = "2026-01-01"


def _write(lake: Lake, table: str, name: str, rows: dict) -> None:
    with lake.open_partition(table, Q) as part:
        part.parquet(name, pa.table(rows).schema).write_table(pa.table(rows))


def test_a_partition_is_scanned_and_rewritten_a_batch_at_a_time_and_a_cycle_without_training_set_is_erased(
    tmp_path, monkeypatch
):
    """The user's rows go from files many batches long, read and written a batch at a time (SCAN_ROWS rows), the
    others stay in order; a cycle harvested but not yet turned into a training set is erased too (the training
    set's files were read unconditionally, and a missing one failed the request)."""
    monkeypatch.setattr(erasure, "SCAN_ROWS", 7)
    lake = Lake(str(tmp_path / "lake"))
    users = [f"u{i % 5}" if i % 11 else None for i in range(100)]
    raw = {"trace_id": [f"t{i}" for i in range(100)], "user_id": users, "prompt": [f"p{i % 13}" for i in range(100)]}
    _write(lake, "reasoning_traces", "part-00000.parquet", raw)
    _write(lake, "harvested_traces", "part-00000.parquet", {**raw, "label": ["positive"] * 100})
    plan = erasure._plan_cycle(lake, Q, "u3")
    assert set(plan) == {("reasoning_traces", "part-00000.parquet"), ("harvested_traces", "part-00000.parquet")}
    for table in ("reasoning_traces", "harvested_traces"):
        erasure._rewrite(lake, table, Q, {name: keep for (t, name), keep in plan.items() if t == table})
        after = lake.read_table(table, Q)
        assert after.column("trace_id").to_pylist() == [f"t{i}" for i in range(100) if users[i] != "u3"]
    assert erasure._plan_cycle(lake, Q, "u3") == {}  # nothing of theirs is left

    # With a training set: its rows built from the user's traces, pairs naming one, and the prompts they asked.
    _write(lake, "training_dataset", "part-00000.parquet", {"trace_id": ["t1", "t8", None], "prompt": ["a", "b", "c"]})
    plan = erasure._plan_cycle(lake, Q, "u1")
    assert ("training_dataset", "part-00000.parquet") in plan
    erasure._rewrite(
        lake, "training_dataset", Q, {"part-00000.parquet": plan[("training_dataset", "part-00000.parquet")]}
    )
    assert lake.read_table("training_dataset", Q).column("trace_id").to_pylist() == ["t8", None]


def test_a_serving_log_is_rewritten_a_line_at_a_time_and_a_damaged_one_is_left_as_it_was(tmp_path):
    """Plain and gzipped logs lose exactly the lines naming the user (a last line without a newline included) and
    stay readable; a log that loses nothing is not rewritten; a damaged gzip raises and leaves no temporary file."""
    import gzip

    lines = [b'{"user_id": "u1", "x": 1}\n', b'{"user_id": "u2"}\n', b'{"note": "u1"}\n', b'{"user_id": "u2"']
    for name, pack in (("a.jsonl", bytes), ("b.jsonl.gz", lambda d: gzip.compress(d, mtime=0))):
        log = tmp_path / name
        log.write_bytes(pack(b"".join(lines)))
        assert erasure.rewrite_log(log, erasure._needles("u1")) == 2
        kept = log.read_bytes() if name.endswith(".jsonl") else gzip.decompress(log.read_bytes())
        assert kept == lines[1] + lines[3]
        before = log.stat().st_mtime_ns
        assert erasure.rewrite_log(log, erasure._needles("u1")) == 0 and log.stat().st_mtime_ns == before
    damaged = tmp_path / "c.jsonl.gz"
    whole = gzip.compress(b"".join(lines) * 100, mtime=0)
    damaged.write_bytes(whole[:-30])
    with pytest.raises(EOFError):
        erasure.rewrite_log(damaged, erasure._needles("u1"))
    assert damaged.read_bytes() == whole[:-30]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl.gz", "c.jsonl.gz"]


def test_a_user_table_is_not_written_from_inputs_read_before_an_erasure_request_started(tmp_path):
    """hold_during_erasure, on its own (the whole request landing inside a Dagster step is in
    test_harvest_cycle.py): once a request has started (its marker, as forget writes it under the lake's lock),
    a lake held before refuses to commit a user table's partition and leaves the old one as it was; other tables
    and a lake held afterwards write; a request that stopped half-way (its journal left) refuses writes up front.
    A commit waits for the lock a request takes as it starts, and is then refused."""
    import threading
    import time

    root = str(tmp_path / "lake")
    lake = Lake(root)
    _write(lake, "harvested_traces", "part-00000.parquet", {"trace_id": ["old"]})
    held = erasure.hold_during_erasure(Lake(root))
    with (
        pytest.raises(erasure.ErasureConflict, match="ran while this step read its inputs"),
        held.open_partition("harvested_traces", Q) as part,
    ):
        part.parquet("part-00000.parquet", pa.schema([("trace_id", pa.string())])).write_table(
            pa.table({"trace_id": ["new, from inputs read before the request"]})
        )
        lake.write_object(erasure.STARTED_TABLE, "20260105T000000000000Z-test", b"")
    assert lake.read_table("harvested_traces", Q).column("trace_id").to_pylist() == ["old"]
    assert lake.files("harvested_traces") == []  # its temporary folder is gone too (dot-named, not listed)
    assert not [p for p in (tmp_path / "lake" / "harvested_traces").iterdir() if p.name.startswith(".tmp")]
    held.write_object("models", "kept.json", b"{}")  # not a table of users' rows
    with held.open_partition("benchmark_reports", Q) as other:
        other.write_bytes("report.json", b"{}")
    _write(erasure.hold_during_erasure(Lake(root)), "harvested_traces", "part-00000.parquet", {"trace_id": ["later"]})
    assert lake.read_table("harvested_traces", Q).column("trace_id").to_pylist() == ["later"]

    lake.write_object(erasure.JOURNAL_TABLE, "stopped.json", b"{}")
    with pytest.raises(erasure.ErasureConflict, match="is running, or stopped before it finished"):
        held = erasure.hold_during_erasure(Lake(root))
        held.open_partition("training_dataset", Q).__enter__()
    lake.delete_object(erasure.JOURNAL_TABLE, "stopped.json")

    # The commit's check and rename hold the lock: here a request starts while a commit waits for it.
    held = erasure.hold_during_erasure(Lake(root))
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            _write(held, "reasoning_traces", "part-00000.parquet", {"trace_id": ["racing"]})
            outcome.append(None)
        except erasure.ErasureConflict as e:
            outcome.append(e)

    with lake.locked():
        writer = threading.Thread(target=commit)
        writer.start()
        time.sleep(0.5)
        assert not outcome and not lake.exists("reasoning_traces", Q)  # waiting for the lock
        lake.write_object(erasure.STARTED_TABLE, "20260105T000001000000Z-test", b"")
    writer.join(10)
    assert isinstance(outcome[0], erasure.ErasureConflict) and not lake.exists("reasoning_traces", Q)


def test_an_old_partition_a_rewrite_could_not_remove_is_cleared_before_the_request_is_recorded(tmp_path):
    """A rewrite whose commit cannot remove the old partition (it holds the user) keeps the rewritten one and
    leaves the old one hidden; the request's closing sweep (clear_leftovers without putting anything back, as
    forget runs it before its audit entry) removes it, and refuses an old partition that is the only copy."""
    lake = Lake(str(tmp_path / "lake"))
    rows = {"trace_id": ["t1", "t2"], "user_id": ["victim", "other"], "prompt": ["p1", "p2"]}
    _write(lake, "harvested_traces", "part-00000.parquet", rows)
    real = lake.fs

    class NoRemovingOld:  # the old partition cannot be removed (a permission, a flaky store)
        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(real, name)

        def delete_dir(self, path: str) -> None:
            if ".old-cycle=" in path:
                raise PermissionError(path)
            real.delete_dir(path)

    lake.fs = NoRemovingOld()
    plan = erasure._plan_cycle(lake, Q, "victim")
    erasure._rewrite(lake, "harvested_traces", Q, {n: keep for (t, n), keep in plan.items() if t == "harvested_traces"})
    lake.fs = real
    assert lake.read_table("harvested_traces", Q).column("user_id").to_pylist() == ["other"]
    (left,) = lake.leftovers("harvested_traces")
    assert left.startswith(".old-cycle=")
    assert lake.clear_leftovers("harvested_traces", restore=False) == [(left, "removed")]
    assert lake.leftovers("harvested_traces") == []

    (tmp_path / "lake" / "harvested_traces" / f"cycle={Q}").rename(tmp_path / "lake" / "harvested_traces" / left)
    with pytest.raises(RuntimeError, match="the only copy"):
        lake.clear_leftovers("harvested_traces", restore=False)
