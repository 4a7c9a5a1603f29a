"""One whole cycle through Dagster on a tiny real flywheel: real instance, MLflow SQLite store, TRL SFT."""

from datetime import UTC, datetime

import dagster as dg
import pytest
from conftest import ASSETS, CHECKS, CYCLE_ASSETS

from flywheel_dagster import cycle as core
from flywheel_dagster.registry import BASE, CHAMPION, cycle_alias

Q1, Q2, Q3 = "2026-01-01", "2026-04-01", "2026-07-01"


def materialize(fw, instance, key, selection=None):
    return dg.materialize(
        [*ASSETS, *CHECKS],
        partition_key=key,
        resources=fw.resources,
        instance=instance,
        selection=selection,
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def one_cycle(tiny_flywheel_factory):
    fw = tiny_flywheel_factory("cycle")
    with dg.instance_for_test() as instance:
        result = materialize(fw, instance, Q1)
        yield fw, instance, result


def test_full_cycle_materializes_every_stage(one_cycle):
    fw, instance, result = one_cycle
    assert result.success
    mats = {e.asset_key.path[-1]: e for e in result.get_asset_materialization_events()}
    assert set(mats) == CYCLE_ASSETS
    meta = lambda name: mats[name].step_materialization_data.materialization.metadata  # noqa: E731
    traces = fw.lake.read_table("reasoning_traces", Q1)
    assert traces.num_rows == 80 * 4 == meta("reasoning_traces")["dagster/row_count"].value
    assert set(traces.column("cycle").to_pylist()) == {Q1}
    assert traces.column("model_version").unique().to_pylist() == [fw.base.ref.version]
    # every trace read is accounted for by exactly one label
    h = meta("harvested_traces")
    assert (
        sum(h[f"count/{k}"].value for k in ("positive", "negative", "unverifiable", "dropped")) == h["count/read"].value
    )
    assert h["count/dropped"].value == sum(v.value for k, v in h.items() if k.startswith("count/drop/"))
    # the loop-health monitors and the training-set gates ran and passed on healthy traffic
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    for name in (
        "distinct_3",
        "near_duplicate_rate",
        "answer_diversity",
        "verified_accuracy",
        "no_pii",
        "no_benchmark_overlap",
    ):
        assert checks[name].passed, (name, checks[name].description)
    training = fw.lake.read_table("training_dataset", Q1)
    assert set(training.column("origin").to_pylist()) == {"synthetic", "human"}
    assert training.num_rows == meta("training_dataset")["dagster/row_count"].value
    # the candidate is a new registered version whose parent is the deployed base
    candidate = core.read_json(fw.lake, "candidate_model", Q1, core.CANDIDATE_FILE)
    assert candidate["parent_version"] == fw.base.ref.version and candidate["version"] != fw.base.ref.version
    assert fw.registry.client.get_run(candidate["run_id"]).data.params["parent_version"] == fw.base.ref.version
    # the report carries every suite and the gate's decision; the champion alias follows it
    report = core.read_json(fw.lake, "benchmark_report", Q1, core.REPORT_FILE)
    assert {s["suite"] for s in report["suites"]} == set(
        ["add_short", "sub_short", "mul_2x1", "add_long", "sub_long", "mul_3x1", "overall"]
    )
    decision = core.read_json(fw.lake, "champion_model", Q1, core.DECISION_FILE)
    expected = candidate["version"] if report["gate"]["promote"] else fw.base.ref.version
    assert (
        decision["champion"]
        == expected
        == fw.registry.alias(CHAMPION).version
        == fw.registry.alias(cycle_alias(Q1)).version
    )
    # the gate ran as a blocking check, and its verdict matches the report
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["promotion_gate"].passed == report["gate"]["promote"]
    # MLflow: bench metrics at step = cycle index on the cycle's parent run
    cycle_run = fw.registry.cycle_run(Q1, 4)
    hist = fw.registry.client.get_metric_history(cycle_run, "bench/overall/delta")
    assert [m.step for m in hist] == [4]
    assert fw.registry.client.get_run(cycle_run).data.tags["flywheel.decision"] == decision["decision"]
    assert "accuracy_per_cycle" in meta("benchmark_report")


def test_rerun_of_a_partition_does_not_duplicate_traces(one_cycle):
    fw, instance, _ = one_cycle
    before = fw.lake.read_table("reasoning_traces", Q1)
    again = materialize(fw, instance, Q1, selection=["deployment", "reasoning_traces"])
    assert again.success
    after = fw.lake.read_table("reasoning_traces", Q1)
    assert after.num_rows == before.num_rows
    assert sorted(after.column("trace_id").to_pylist()) == sorted(before.column("trace_id").to_pylist())
    assert len(set(after.column("trace_id").to_pylist())) == after.num_rows
    # the rerun deployed what the previous cycle ended with (the base), not the alias this cycle moved
    assert core.read_json(fw.lake, "deployment", Q1, core.DEPLOYMENT_FILE)["version"] == fw.registry.alias(BASE).version


def test_cycle_cannot_start_before_the_previous_one_finished(one_cycle):
    fw, instance, _ = one_cycle
    result = materialize(fw, instance, Q3, selection=["deployment"])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = (
        failure.event_specific_data.error.cause.message
        if failure.event_specific_data.error.cause
        else failure.event_specific_data.error.message
    )
    assert f"cycle {Q3} cannot start: the previous cycle {Q2} has not finished" in message


def test_broken_candidate_is_not_promoted(tiny_flywheel_factory):
    """A forced regression: a candidate trained with an absurd learning rate must not become champion."""
    fw = tiny_flywheel_factory("regression", {"training": {"learning_rate": 5.0, "epochs": 1}})
    with dg.instance_for_test() as instance:
        result = materialize(fw, instance, Q1)
    assert result.success  # the cycle finishes; the decision is to keep the champion
    decision = core.read_json(fw.lake, "champion_model", Q1, core.DECISION_FILE)
    report = core.read_json(fw.lake, "benchmark_report", Q1, core.REPORT_FILE)
    overall = next(s for s in report["suites"] if s["suite"] == "overall")
    assert overall["delta"] < 0 and overall["delta_ci"][1] < 0
    assert decision["decision"] == "rejected"
    assert fw.registry.alias(CHAMPION).version == fw.base.ref.version
    assert fw.registry.alias(cycle_alias(Q1)).version == fw.base.ref.version
    mv = fw.registry.client.get_model_version(fw.registry.model_name, decision["candidate"])
    assert mv.tags["flywheel.decision"] == "rejected"
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "promotion_gate")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN


def test_schedule_tick_requests_the_quarter_that_just_ended():
    from jobs.cycle import quarterly_schedule

    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 10, 1, tzinfo=UTC))
    requests = list(quarterly_schedule.evaluate_tick(ctx).run_requests)
    assert [r.partition_key for r in requests] == [Q3]
    assert quarterly_schedule.cron_schedule == "0 0 1 */3 *"


def test_first_cycle_deploys_base_and_later_cycles_deploy_what_the_previous_promoted(one_cycle):
    fw, instance, _ = one_cycle
    finished = {Q1}
    assert core.resolve_deployment(fw.registry, Q2, Q1, finished)[1] == cycle_alias(Q1)
    assert core.resolve_deployment(fw.registry, Q1, "2025-10-01", finished)[1] == BASE  # rerun of the first
    with pytest.raises(core.CycleOrderError, match="later cycles already finished"):
        core.resolve_deployment(fw.registry, "2025-10-01", "2025-07-01", finished)
