import pyarrow as pa
import pytest

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
