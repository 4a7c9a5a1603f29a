from datetime import UTC, datetime

import pyarrow as pa
import pytest

from flywheel_dagster.curation.harvest import build_training_dataset, harvest
from flywheel_dagster.tasks.playground import PlaygroundTask
from flywheel_dagster.traces.schema import TRACE_SCHEMA, trace_id


def _traces(task, completions):
    """Trace rows for (problem, completion) pairs, as reasoning_traces writes them."""
    rows = []
    for i, (p, text) in enumerate(completions):
        rows.append(
            {
                "trace_id": trace_id("c", "1", p.problem_id, p.prompt, i),
                "cycle": "c",
                "source": "simulated",
                "model_name": "m",
                "model_version": "1",
                "problem_id": p.problem_id,
                "suite": p.suite,
                "prompt": p.prompt,
                "completion": text,
                "reasoning": text,
                "answer": None,
                "reference_answer": p.reference,
                "correct": None,
                "verifier": None,
                "verdict": None,
                "tokens": len(text),
                "mean_logprob": -0.1,
                "finish_reason": "stop",
                "sample_index": i,
                "created_at": datetime.now(UTC),
            }
        )
    return pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)


@pytest.fixture(scope="module")
def task():
    return PlaygroundTask()


def test_labels_and_counts_account_for_every_trace(task):
    a, b = task.traffic(0, 2)
    wrong = a.solution.replace(f"A:{a.reference}", f"A:{int(a.reference) + 1}")
    traces = _traces(task, [(a, a.solution), (a, a.solution), (a, wrong), (b, b.solution), (b, "garbage")])
    traces = traces.set_column(
        traces.schema.get_field_index("reference_answer"),
        "reference_answer",
        pa.array([a.reference] * 3 + [b.reference, None]),
    )
    result = harvest(traces, task, max_positives_per_problem=1)
    labels = result.harvested.column("label").to_pylist()
    assert labels == ["positive", "duplicate", "negative", "positive", "unverifiable"]
    c = result.counts
    assert (c["read"], c["positive"], c["negative"], c["duplicate"], c["unverifiable"], c["over_cap"]) == (
        5,
        2,
        1,
        1,
        1,
        0,
    )
    assert result.harvested.column("drop_reason").to_pylist()[1] == "exact_duplicate"
    assert result.harvested.column("correct").to_pylist()[:4] == [True, True, False, True]


def test_positive_cap_per_problem(task):
    (a,) = task.traffic(0, 1)
    variants = [(a, a.solution), (a, a.solution + " "), (a, " " + a.solution + "\n")]
    result = harvest(_traces(task, variants), task, max_positives_per_problem=5)
    # whitespace variants are the same text to exact dedup
    assert result.harvested.column("label").to_pylist() == ["positive", "duplicate", "duplicate"]


def test_training_dataset_mixes_anchors_at_the_configured_share(task):
    problems = task.traffic(0, 30)
    harvested = harvest(_traces(task, [(p, p.solution) for p in problems]), task, 2).harvested
    table, comp = build_training_dataset(harvested, task.anchors(100, 1), anchor_fraction=0.25, validation_fraction=0.2)
    assert comp["synthetic"] == 30 and comp["human"] == 10
    assert table.num_rows == 40
    assert set(table.column("split").to_pylist()) == {"train", "validation"}
    by_problem = {}
    for r in table.to_pylist():
        by_problem.setdefault(r["problem_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_problem.values())  # no problem on both sides of the split


def test_no_positives_is_a_clear_error(task):
    (a,) = task.traffic(0, 1)
    harvested = harvest(_traces(task, [(a, "nonsense")]), task, 2).harvested
    with pytest.raises(
        ValueError, match=r"no verified positive traces to distill from \(1 harvested traces: \{'negative': 1\}\)"
    ):
        build_training_dataset(harvested, task.anchors(10, 1), 0.5, 0.0)


def test_anchors_needed_share_and_floor():
    from flywheel_dagster.curation.harvest import anchors_needed

    assert anchors_needed(30, 0.25) == 10  # 10 / (30 + 10) = 0.25
    assert anchors_needed(30, 0.0) == 0
    assert anchors_needed(0, 0.5, min_examples=8) == 8  # no positives: the floor fills the set
    assert anchors_needed(100, 0.5, min_examples=8) == 100
