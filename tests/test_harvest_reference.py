"""The ingest and the harvest reproduce, row for row, the reference outputs the per-row implementation wrote
on a fixed input (tests/make_harvest_reference.py): the same trace rows, quarantine rows, labels, reason codes,
redactions, counts and monitor figures, with near-duplicate detection off and on."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from make_harvest_reference import MODES, OUT, TASKS, input_path, run

from flywheel_dagster.traces.schema import CONTEXT_PII


def first_difference(got: pa.Table, want: pa.Table) -> str:
    if got.schema != want.schema:
        return f"schema differs:\n{got.schema}\nexpected:\n{want.schema}"
    if got.num_rows != want.num_rows:
        return f"{got.num_rows} rows, expected {want.num_rows}"
    for name in want.column_names:
        a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return f"column {name!r}, row {i}: {x!r}, expected {y!r}"
    return "tables differ"


@pytest.fixture(scope="module", params=TASKS)
def reference(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    task = request.param
    path = tmp_path_factory.mktemp(task) / f"{task}.input.jsonl"  # the name the reference was made from
    path.write_bytes(gzip.decompress(input_path(task).read_bytes()))
    return task, {mode: run(task, path, mode == "near") for mode in MODES}


def test_ingest_writes_the_reference_trace_and_quarantine_rows(reference: tuple[str, dict]) -> None:
    task, results = reference
    for name in ("traces", "quarantine"):
        want = pq.read_table(OUT / f"{task}.{name}.parquet")
        got = results["exact"][name]
        if name == "traces" and CONTEXT_PII not in want.schema.names:
            # context_pii came after the reference: the input's requests are one user turn each, so every
            # trace has none.
            assert got.column(CONTEXT_PII).null_count == got.num_rows
            got = got.drop_columns([CONTEXT_PII])
        assert got.equals(want), f"{task} {name}: {first_difference(got, want)}"
    summary = json.loads((OUT / f"{task}.summary.json").read_text())
    # every count the reference holds (counts added since, like contexts_unsearched, come on top)
    got_ingest = results["exact"]["summary"]["ingest"]
    assert {k: got_ingest[k] for k in summary["exact"]["ingest"]} == summary["exact"]["ingest"]


@pytest.mark.parametrize("mode", MODES)
def test_harvest_writes_the_reference_labels_redactions_counts_and_monitors(
    reference: tuple[str, dict], mode: str
) -> None:
    task, results = reference
    want = pq.read_table(OUT / f"{task}.{mode}.harvested.parquet")
    got = results[mode]["harvested"]
    assert got.equals(want), f"{task} {mode}: {first_difference(got, want)}"
    summary = json.loads((OUT / f"{task}.summary.json").read_text())[mode]
    got_summary = json.loads(json.dumps(results[mode]["summary"]))  # tuples to lists, as in the file
    for part in ("counts", "pii"):
        assert got_summary[part] == summary[part], f"{task} {mode}: {part}"
    # every monitor figure the reference holds (figures added since, like verified_accuracy_drop, come on top)
    assert {k: got_summary["monitors"][k] for k in summary["monitors"]} == summary["monitors"], f"{task} {mode}"
    # The reference exercises what it claims to: every label, most drop reasons, PII of several types.
    labels = set(want.column("label").to_pylist())
    assert {"positive", "negative", "dropped"} <= labels
    assert len(summary["pii"]) >= 3


def test_the_harvest_with_its_state_on_disk_writes_the_reference(tmp_path) -> None:  # noqa: ANN001
    """Room in memory for 256 keys a store (the dedup keys, per-problem counts and LSH bands spill to disk and
    merge there as the quarter goes on): the same labels, reasons and counts as the reference."""
    for task in TASKS:
        path = tmp_path / f"{task}.input.jsonl"
        path.write_bytes(gzip.decompress(input_path(task).read_bytes()))
        got = run(task, path, near=True, memory_keys=256)
        want = pq.read_table(OUT / f"{task}.near.harvested.parquet")
        assert got["harvested"].equals(want), f"{task}: {first_difference(got['harvested'], want)}"
        summary = json.loads((OUT / f"{task}.summary.json").read_text())["near"]
        assert got["summary"]["counts"] == summary["counts"]
        seen, _per_problem, *bands = got["spilled"]  # fewer problems than 256 here: test_keystore spills counts
        assert seen > 0 and max(bands) > 0, got["spilled"]  # went to disk, and came back right
