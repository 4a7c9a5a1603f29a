import dataclasses

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel_dagster.traces.lake import Lake


def _table(n, offset=0):
    return pa.table({"trace_id": [f"t{i + offset}" for i in range(n)], "x": list(range(n))})


def test_rewrite_replaces_the_partition(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    first = lake.write_table("reasoning_traces", "2026-01-01", _table(5))
    second = lake.write_table("reasoning_traces", "2026-01-01", _table(3, offset=10))
    assert first.rows == 5 and second.rows == 3
    assert lake.read_table("reasoning_traces", "2026-01-01").column("trace_id").to_pylist() == ["t10", "t11", "t12"]
    assert first.sha256 != second.sha256
    leftovers = [p.name for p in (tmp_path / "lake" / "reasoning_traces").iterdir()]
    assert leftovers == ["cycle=2026-01-01"]


def test_failed_write_keeps_the_old_partition(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.write_table("t", "c", _table(4))

    with pytest.raises(TypeError):
        lake.write_partition("t", "c", {"part-00000.parquet": _table(2), "bad": object()})  # fails mid-write
    assert lake.read_table("t", "c").num_rows == 4  # readers still see the complete old partition


def test_missing_partition_is_a_clear_error(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(
        FileNotFoundError, match="lake table 'harvested_traces' has no partition for cycle '2026-04-01'"
    ):
        lake.read_table("harvested_traces", "2026-04-01")


def test_bytes_and_hashes(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    files = lake.write_partition("benchmark_report", "c", {"report.json": b'{"a": 1}'})
    import hashlib

    assert files["report.json"].sha256 == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert lake.read_bytes("benchmark_report", "c", "report.json") == b'{"a": 1}'
    assert files["report.json"].uri.startswith("file://")


def test_streaming_partition_write_is_all_or_nothing(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    old = pa.table({"x": [1, 2]})
    lake.write_table("t", "c", old)
    with pytest.raises(RuntimeError, match="crash mid-quarter"):
        with lake.open_partition("t", "c") as part:
            w = part.parquet("part-00000.parquet", old.schema)
            w.write_table(pa.table({"x": [7]}))
            raise RuntimeError("crash mid-quarter")
    assert lake.read_table("t", "c").column("x").to_pylist() == [1, 2]  # nothing already written is lost
    with lake.open_partition("t", "c") as part:
        w = part.parquet("part-00000.parquet", old.schema)
        for i in range(3):
            w.write_table(pa.table({"x": [i]}))
        part.write_bytes("side.json", b"{}")
    assert part.files["part-00000.parquet"].rows == 3
    assert [b.num_rows for b in lake.iter_batches("t", "c", batch_rows=2)] == [2, 1]
    assert lake.read_bytes("t", "c", "side.json") == b"{}"


def test_a_partition_is_read_back_by_row_groups_of_at_most_8192_rows(tmp_path):
    """A whole quarter written at once (as simulated traffic is) still comes back in row groups a Ray worker can
    be sent one at a time, each read by name from another process's point of view (location + path)."""
    lake = Lake(str(tmp_path / "lake"))
    table = pa.table({"trace_id": [f"t{i}" for i in range(20_000)], "n": list(range(20_000))})
    lake.write_table("reasoning_traces", "2026-01-01", table)
    groups = lake.row_groups("reasoning_traces", "2026-01-01")
    assert [g.rows for g in groups] == [8192, 8192, 3616]
    assert all(g.location == str(tmp_path / "lake") for g in groups)  # absolute: another process opens it
    assert pa.concat_tables([g.read() for g in groups]).equals(table)
    with pytest.raises(FileNotFoundError, match="no partition for cycle '2026-04-01'"):
        lake.row_groups("reasoning_traces", "2026-04-01")


def test_row_groups_parse_their_files_footer_once_and_a_rewritten_partition_is_read_anew(tmp_path):
    """A process reading group after group parses the file's footer (every group's metadata: megabytes at a
    quarter's size) once; a partition rewritten under the same name is read with its own footer."""
    from flywheel_dagster.traces import lake as lake_module

    lake = Lake(str(tmp_path / "lake"))
    first = pa.table({"n": list(range(20_000))})
    lake.write_table("reasoning_traces", "2026-01-01", first)
    lake_module._footer.cache_clear()
    groups = lake.row_groups("reasoning_traces", "2026-01-01")
    assert pa.concat_tables([g.read() for g in groups]).equals(first)
    assert lake_module._footer.cache_info().misses == 1 and lake_module._footer.cache_info().hits == 2
    again = pa.table({"n": list(range(100, 30_100))})
    lake.write_table("reasoning_traces", "2026-01-01", again)
    groups = lake.row_groups("reasoning_traces", "2026-01-01")
    assert [g.rows for g in groups] == [8192, 8192, 8192, 5424]
    assert pa.concat_tables([g.read() for g in groups]).equals(again)
    assert lake_module._footer.cache_info().misses == 2
    # A store that gives no modification time: every read parses the footer, nothing is cached.
    unknown = [dataclasses.replace(g, version=None) for g in groups]
    assert pa.concat_tables([g.read() for g in unknown]).equals(again)
    assert lake_module._footer.cache_info().misses == 2 and lake_module._footer.cache_info().currsize == 2


@given(st.lists(st.integers(0, 9), max_size=12), st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_batches_hold_batch_rows_rows_whatever_the_row_groups(tmp_path_factory, groups, batch_rows):
    """A partition read a row group at a time still comes in batches of batch_rows rows, the last shorter, in
    order: row groups of any size (erasure's rewrites leave groups smaller than 8,192) change nothing."""
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    schema = pa.schema([("x", pa.int64())])
    with lake.open_partition("t", "c") as part:
        w = part.parquet("part-00000.parquet", schema)
        start = 0
        for size in groups:
            w.write_table(pa.table({"x": list(range(start, start + size))}, schema=schema))
            start += size
    batches = list(lake.iter_batches("t", "c", batch_rows=batch_rows))
    sizes = [b.num_rows for b in batches]
    assert (
        sum(sizes) == start and all(n == batch_rows for n in sizes[:-1]) and (not sizes or 0 < sizes[-1] <= batch_rows)
    )
    assert [x for b in batches for x in b.column(0).to_pylist()] == list(range(start))
    # no columns at all (only the row counts): the same sizes (a table of no columns slices differently)
    assert [b.num_rows for b in lake.iter_batches("t", "c", columns=[], batch_rows=batch_rows)] == sizes


def test_an_open_file_reads_the_same_rows_while_its_partition_is_rewritten(tmp_path):
    """What reads a partition twice (the training set) sees one version, even if it is rewritten in between."""
    lake = Lake(str(tmp_path / "lake"))
    first = pa.table({"n": list(range(10_000))})
    lake.write_table("harvested_traces", "c", first)
    with lake.open_file("harvested_traces", "c") as data:
        assert pa.Table.from_batches(list(data.batches())).equals(first)
        lake.write_table("harvested_traces", "c", pa.table({"n": [7]}))
        assert pa.Table.from_batches(list(data.batches(["n"], 300))).equals(first)
    assert lake.read_table("harvested_traces", "c").num_rows == 1


def test_an_object_is_replaced_whole_and_a_refused_commit_leaves_the_partition_as_it_was(tmp_path):
    """replace_object (an erasure's journal) swaps the file in one rename; a commit whose guard refuses it, or
    whose lock cannot be taken, leaves the old partition and no temporary folder."""
    import pyarrow as pa
    import pytest

    from flywheel_dagster.traces.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    lake.replace_object("journal", "a.json", b"1")
    lake.replace_object("journal", "a.json", b"2")
    assert lake.read_object("journal", "a.json") == b"2" and lake.files("journal") == ["a.json"]
    assert [p.name for p in (tmp_path / "lake" / "journal").iterdir()] == ["a.json"]
    lake.write_table("t", "q", pa.table({"x": [1]}))

    def refuse(table: str) -> None:
        raise PermissionError(f"{table}: no")

    lake.write_guard = refuse
    with pytest.raises(PermissionError, match="t: no"):
        lake.write_table("t", "q", pa.table({"x": [2]}))
    lake.write_guard = None
    (tmp_path / "lake" / ".lock").unlink()
    (tmp_path / "lake" / ".lock").mkdir()  # the lock file cannot be opened
    with pytest.raises(IsADirectoryError):
        lake.write_table("t", "q", pa.table({"x": [3]}))
    assert lake.read_table("t", "q").column("x").to_pylist() == [1]
    assert [p.name for p in (tmp_path / "lake" / "t").iterdir()] == ["cycle=q"]


def test_partitions_opened_together_are_committed_all_or_none(tmp_path):
    """open_partitions (the ingest's traces and quarantine): a guard refusing one table commits neither; a rename
    failing part-way puts back the partition already renamed; no temporary folder stays; and a clean block
    commits both."""
    import pyarrow as pa
    import pytest

    from flywheel_dagster.traces.lake import Lake

    class LostFolder(Lake):  # the second partition's folder cannot be made: its rename fails
        def partition_dir(self, table: str, cycle: str) -> str:
            return (
                f"{self.root}/gone/gone/cycle={cycle}"
                if table == "b" and self.fail
                else super().partition_dir(table, cycle)
            )

    lake = LostFolder(str(tmp_path / "lake"))
    lake.fail = False
    lake.write_table("a", "q", pa.table({"x": [1]}))
    lake.write_table("b", "q", pa.table({"x": [1]}))

    def write_both(value: int) -> None:
        with lake.open_partitions(("a", "q"), ("b", "q")) as (a, b):
            for part in (a, b):
                part.parquet("part-00000.parquet", pa.schema([("x", pa.int64())])).write_table(pa.table({"x": [value]}))

    def refuse_b(table: str) -> None:
        if table == "b":
            raise PermissionError("b: no")

    lake.write_guard = refuse_b
    with pytest.raises(PermissionError):
        write_both(2)
    lake.write_guard = None
    lake.fail = True
    with pytest.raises(OSError):
        write_both(3)
    lake.fail = False
    for table in ("a", "b"):
        assert lake.read_table(table, "q").column("x").to_pylist() == [1]
        assert [p.name for p in (tmp_path / "lake" / table).iterdir()] == ["cycle=q"]
    write_both(4)
    assert [lake.read_table(t, "q").column("x").to_pylist() for t in ("a", "b")] == [[4], [4]]


def test_leftover_folders_are_removed_and_the_newest_only_copy_of_a_partition_is_put_back(tmp_path):
    """clear_leftovers (an erasure request's sweep): temporary folders and old partitions beside a live one go;
    of two old partitions of a quarter that has none (two commits killed between their renames), the newer one
    is put back and the other removed."""
    import os
    import shutil

    import pyarrow as pa

    from flywheel_dagster.traces.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    for cycle, value in (("q1", 1), ("q2", 2), ("q3", 3)):
        lake.write_table("t", cycle, pa.table({"x": [value]}))
    table_dir = tmp_path / "lake" / "t"
    shutil.copytree(table_dir / "cycle=q1", table_dir / ".tmp-cycle=q1-0000aaaa")
    shutil.copytree(table_dir / "cycle=q1", table_dir / ".old-cycle=q1-0000bbbb")
    (table_dir / "cycle=q2").rename(table_dir / ".old-cycle=q2-ffffffff")  # older: written first
    (table_dir / "cycle=q3").rename(table_dir / ".old-cycle=q2-00000000")  # newer
    old = table_dir / ".old-cycle=q2-ffffffff" / "part-00000.parquet"
    os.utime(old, ns=(old.stat().st_mtime_ns - 10**9,) * 2)
    assert sorted(lake.clear_leftovers("t")) == [
        (".old-cycle=q1-0000bbbb", "removed"),
        (".old-cycle=q2-00000000", "restored"),
        (".old-cycle=q2-ffffffff", "removed"),
        (".tmp-cycle=q1-0000aaaa", "removed"),
    ]
    assert lake.leftovers("t") == [] and lake.cycles("t") == ["q1", "q2"]
    assert lake.read_table("t", "q2").column("x").to_pylist() == [3]
