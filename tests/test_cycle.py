"""One whole cycle through Dagster on a tiny real flywheel: real instance, MLflow SQLite store, TRL SFT."""

import json
from datetime import UTC, datetime

import dagster as dg
import pytest
from conftest import ASSETS, CHECKS, CYCLE_ASSETS

from flywheel_dagster import cycle as core
from flywheel_dagster.records import BenchmarkReport, Candidate, Decision, Deployment
from flywheel_dagster.registry import BASE, CHAMPION, cycle_alias
from flywheel_dagster.resources import EngineResource

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
    fw = tiny_flywheel_factory("cycle", launcher="subprocess")  # the whole cycle as production runs it
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
    candidate = Candidate.read(fw.lake, Q1).to_json()
    assert candidate["parent_version"] == fw.base.ref.version and candidate["version"] != fw.base.ref.version
    assert fw.registry.client.get_run(candidate["run_id"]).data.params["parent_version"] == fw.base.ref.version
    # the report carries every suite and the gate's decision; the champion alias follows it
    report = BenchmarkReport.read(fw.lake, Q1).to_json()
    assert {s["suite"] for s in report["suites"]} == set(
        ["add_short", "sub_short", "mul_2x1", "add_long", "sub_long", "mul_3x1", "overall"]
    )
    decision = Decision.read(fw.lake, Q1).to_json()
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
    cycle_run = fw.registry.cycle_run(Q1, 0)
    hist = fw.registry.client.get_metric_history(cycle_run, "bench/overall/delta")
    assert [m.step for m in hist] == [0]  # the flywheel's first cycle
    assert fw.registry.client.get_run(cycle_run).data.tags["flywheel.decision"] == decision["decision"]
    assert "accuracy_per_cycle" in meta("benchmark_report")
    # where the flywheel stands, on cycle_audit: the cycle in a sentence and every cycle as a table row
    summary, cycles = meta("cycle_audit")["summary"].value, meta("cycle_audit")["cycles"].value
    o = next(s for s in report["suites"] if s["suite"] == "overall")
    assert summary.startswith(f"{Q1}: candidate v{candidate['version']} {o['candidate']:.3f} against champion")
    assert (
        f"delta {o['delta']:+.3f} [{o['delta_ci'][0]:+.3f}, {o['delta_ci'][1]:+.3f}]: {decision['decision']}" in summary
    )
    assert f"(sft; {traces.num_rows:,} traces, {training.num_rows:,} training examples" in summary
    assert cycles.count(f"| {Q1} |") == 1 and decision["decision"] in cycles


def test_audit_record_covers_the_cycle(one_cycle):
    from flywheel_dagster import audit

    fw, _, result = one_cycle
    chain = audit.Chain(fw.lake)
    entries = chain.entries()
    genesis, rec = entries[0], entries[1]
    # the chain starts at the bootstrap base model, and the cycle's record links to it
    assert genesis["kind"] == "genesis" and genesis["model"]["version"] == fw.base.ref.version
    assert genesis["model"]["weights_sha256"] == fw.base.weights_sha256
    assert rec["previous_sha256"] == audit.sha256_bytes(chain.raw()[0][1])
    assert rec["kind"] == "cycle" and rec["cycle"] == Q1 and rec["amends"] is None
    sha = audit.sha256_bytes(chain.raw()[1][1])
    # every stage asset: this run, its code version, its data version
    assert set(rec["assets"]) == CYCLE_ASSETS - {"cycle_audit"}
    assert {a["run_id"] for a in rec["assets"].values()} == {result.run_id}
    assert rec["assets"]["training_dataset"]["code_version"] == "3"
    assert rec["assets"]["training_dataset"]["data_version"] == fw.lake.sha256("training_dataset", Q1)[:16]
    assert rec["assets"]["harvested_traces"]["counts"]["count/read"] == 320
    # every dataset file with its hash and rows
    files = {(f["table"], f["file"]): f for f in rec["files"]}
    data = files[("training_dataset", "part-00000.parquet")]
    assert data["sha256"] == fw.lake.sha256("training_dataset", Q1)
    assert data["rows"] == fw.lake.read_table("training_dataset", Q1).num_rows
    assert {("reasoning_traces", "part-00000.parquet"), ("training_dataset", "pairs.parquet")} <= set(files)
    assert any(f["table"] == "evaluations" for f in rec["files"])  # the per-sample benchmark results
    # checks, training, models, benchmark, decision
    assert rec["checks"]["no_pii"]["passed"] and rec["checks"]["no_benchmark_overlap"]["passed"]
    assert rec["checks"]["human_approval"]["passed"]
    assert "promotion_gate" in rec["checks"]
    candidate = Candidate.read(fw.lake, Q1).to_json()
    assert rec["training"]["method"] == "sft" and rec["training"]["mlflow_run_id"] == candidate["run_id"]
    assert rec["training"]["config"]["learning_rate"] == "0.0002"
    cand = rec["models"]["candidate"]
    assert cand["version"] == candidate["version"] and cand["weights_sha256"] == candidate["weights_sha256"]
    assert cand["files_sha256"] == fw.registry.files_sha256(fw.registry.version(candidate["version"]))
    report = BenchmarkReport.read(fw.lake, Q1).to_json()
    assert rec["benchmark"]["suites"] == report["suites"] and rec["gate"] == report["gate"]
    decision = Decision.read(fw.lake, Q1).to_json()
    assert rec["decision"]["decision"] == decision["decision"]
    assert rec["approval"] == {"required": False, "record": None}
    # anchored outside the lake, copied beside the HTML report
    cycle_run = fw.registry.client.get_run(fw.registry.cycle_run(Q1, 0))
    assert cycle_run.data.tags[audit.RECORD_TAG] == sha
    assert fw.registry.experiment_tag(audit.HEAD_TAG) == sha
    assert fw.lake.read_bytes(audit.AUDIT_TABLE, Q1, audit.RECORD_FILE) == chain.raw()[1][1]
    html = fw.lake.read_bytes(audit.AUDIT_TABLE, Q1, audit.REPORT_FILE).decode()
    assert f"cycle {Q1}" in html and decision["decision"] in html and candidate["weights_sha256"][:16] in html
    assert audit.verify(fw.lake, fw.registry) == []


def test_reauditing_an_unchanged_cycle_appends_nothing(one_cycle):
    from flywheel_dagster import audit

    fw, instance, _ = one_cycle
    before = audit.Chain(fw.lake).raw()
    again = materialize(fw, instance, Q1, selection=["cycle_audit"])
    assert again.success
    assert audit.Chain(fw.lake).raw() == before
    mat = again.get_asset_materialization_events()[0].step_materialization_data.materialization
    assert mat.metadata["appended"].value is False and mat.metadata["chain_seq"].value == 2


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
    assert Deployment.read(fw.lake, Q1).to_json()["version"] == fw.registry.alias(BASE).version


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
    assert f"cycle {Q3} cannot start: the cycle before it, {Q2}, has not finished" in message
    assert f"the last finished cycle is {Q1}" in message and f"Run cycle {Q2} first." in message
    assert "Traceback" not in message and "\n" not in message.strip()  # one line, named in the UI as it is


def test_broken_candidate_is_not_promoted(tiny_flywheel_factory):
    """A forced regression: a candidate trained with an absurd learning rate must not become champion."""
    fw = tiny_flywheel_factory("regression", {"training": {"learning_rate": 5.0, "epochs": 1}})
    with dg.instance_for_test() as instance:
        result = materialize(fw, instance, Q1)
    assert result.success  # the cycle finishes; the decision is to keep the champion
    decision = Decision.read(fw.lake, Q1).to_json()
    report = BenchmarkReport.read(fw.lake, Q1).to_json()
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
    from flywheel_dagster.partitions import quarterly_partitions
    from jobs.cycle import cycle_jobs

    _, _, quarterly_schedule = cycle_jobs(quarterly_partitions(Q1))

    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 10, 1, tzinfo=UTC))
    requests = list(quarterly_schedule.evaluate_tick(ctx).run_requests)
    assert [r.partition_key for r in requests] == [Q3]
    assert quarterly_schedule.cron_schedule == "0 0 1 */3 *"


def test_first_cycle_deploys_base_and_later_cycles_deploy_what_the_previous_promoted(one_cycle):
    fw, instance, _ = one_cycle
    finished = {Q1}
    assert core.resolve_deployment(fw.registry, Q2, Q1, finished)[1] == cycle_alias(Q1)
    assert core.resolve_deployment(fw.registry, Q1, None, finished)[1] == BASE  # rerun of the first
    # A skipped quarter is refused with the one to run first, whatever has run: never a second genesis.
    with pytest.raises(core.CycleOrderError, match=rf"Run cycle {Q1} \(the flywheel's first\) first"):
        core.resolve_deployment(fw.registry, Q3, Q2, set(), first_cycle=Q1)
    with pytest.raises(core.CycleOrderError, match=f"the last finished cycle is {Q1}.*Run cycle {Q2} first"):
        core.resolve_deployment(fw.registry, Q3, Q2, finished, first_cycle=Q1)


def test_a_finished_quarter_run_again_trains_nothing_over_a_champion_it_never_met(one_cycle):
    """Once another model is the champion (a later quarter promoted it, or a rollback: here the alias moves to
    Q1's candidate as a promotion would move it), Q1 run again deploys what served then, and a candidate trained
    from that would be compared with it, not with the champion of now: candidate_model refuses before training
    (champion_model would refuse to promote it), and no model version is added."""
    fw, instance, _ = one_cycle
    deployed, champion = Deployment.read(fw.lake, Q1).version, fw.registry.alias(CHAMPION).version
    assert deployed == champion
    versions = len(fw.registry.client.search_model_versions(f"name='{fw.registry.model_name}'"))
    fw.registry.set_alias(CHAMPION, Candidate.read(fw.lake, Q1).version)
    try:
        again = materialize(fw, instance, Q1, selection=["candidate_model"])
    finally:
        fw.registry.set_alias(CHAMPION, champion)
    assert not again.success
    (failure,) = [e for e in again.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"deployed v{deployed}, but v{Candidate.read(fw.lake, Q1).version} is the champion now: nothing trained" in (
        failure.step_failure_data.error.message
    )
    assert len(fw.registry.client.search_model_versions(f"name='{fw.registry.model_name}'")) == versions


class Evaluated(Exception):
    """What evaluating a version raised in the tests below: they expect the cached evaluation, or this."""


def _evaluated(path):  # noqa: ANN001, ANN202 - the engine loader, reached only when no cached evaluation answers
    raise Evaluated(path)


def _q1_champion(one_cycle):  # noqa: ANN001, ANN202
    """The cycle, Q1's deployed version, the task and the engine's identity."""
    from flywheel_dagster.tasks import load_task

    fw, _, _ = one_cycle
    return (
        fw,
        fw.registry.version(Deployment.read(fw.lake, Q1).version),
        load_task(fw.cfg),
        EngineResource().identity(fw.cfg),
    )


def test_a_cached_evaluation_belongs_to_the_version_its_run_registered(one_cycle):
    """A registry made again beside a kept lake numbers its versions from 1 again: the new v1 (another run) is
    evaluated, not judged by the old v1's cached evaluation; the old one still reads its own."""
    import dataclasses

    from flywheel_dagster.cycle import evaluate_version

    fw, ref, task, engine_id = _q1_champion(one_cycle)
    assert evaluate_version(fw.cfg, task, fw.lake, fw.registry, ref, _evaluated, engine_id).cached
    again = dataclasses.replace(ref, run_id="f" * 32)  # the same name and version, registered by another run
    with pytest.raises(Evaluated):
        evaluate_version(fw.cfg, task, fw.lake, fw.registry, again, _evaluated, engine_id)


def test_a_cached_evaluation_belongs_to_the_engine_and_verifier_that_made_it(one_cycle, monkeypatch):
    """After an upgrade of the engine's package (or torch), or of the verifier, a version's cached evaluation is
    not read back: the champion is evaluated again by what evaluates the candidate. The serving health check picks
    the prompts the version solved in the evaluation the benchmark reads now, else in any evaluation of it on this
    benchmark, whatever made it, else in one named as before engines and verifiers were in the name."""
    import dataclasses
    import hashlib

    import pyarrow as pa

    from flywheel_dagster.cycle import evaluate_version
    from flywheel_dagster.engines import base
    from flywheel_dagster.serving.client import health_prompts

    fw, ref, task, engine_id = _q1_champion(one_cycle)
    versions = f"transformers-{base.package_version('transformers')}+torch-{base.package_version('torch')}"
    assert engine_id == f"{versions}/cpu"
    assert evaluate_version(fw.cfg, task, fw.lake, fw.registry, ref, _evaluated, engine_id).cached
    prompts, needed, source = health_prompts(fw.cfg, task, fw.lake, fw.registry, ref)
    assert needed > 0 and "solved in all samples" in source
    with pytest.raises(Evaluated):
        evaluate_version(fw.cfg, task, fw.lake, fw.registry, ref, _evaluated, engine_id.replace("/", ".1/"))
    monkeypatch.setattr(type(task), "verifier_version", "next", raising=False)
    with pytest.raises(Evaluated):
        evaluate_version(fw.cfg, task, fw.lake, fw.registry, ref, _evaluated, engine_id)
    assert health_prompts(fw.cfg, task, fw.lake, fw.registry, ref)[:2] == (prompts, needed)
    sharded = fw.cfg.model_copy(update={"engine": fw.cfg.engine.model_copy(update={"replicas": 2})})
    assert EngineResource().identity(sharded) == f"{engine_id} sharded-{fw.cfg.engine.shard_prompts}"
    # The evaluation the benchmark of now reads comes first: another engine's, which solved nothing, is passed over.
    monkeypatch.undo()
    from flywheel_dagster.cycle import benchmark_settings, evaluation_benchmark_prefix
    from flywheel_dagster.records import EVALUATIONS, evaluation_prefix

    problems = task.benchmark(fw.cfg.benchmark.problems_per_suite, fw.cfg.benchmark.seed)
    table = fw.lake.read_table(
        EVALUATIONS,
        next(
            k
            for k in fw.lake.cycles(EVALUATIONS)
            if k.startswith(evaluation_benchmark_prefix(ref, problems, benchmark_settings(fw.cfg)))
        ),
    )
    unsolved = table.set_column(table.schema.get_field_index("pass_at_1"), "pass_at_1", pa.array([0.0] * len(table)))
    fw.lake.write_table(
        EVALUATIONS, evaluation_benchmark_prefix(ref, problems, benchmark_settings(fw.cfg)) + "ffffffff", unsolved
    )
    assert health_prompts(fw.cfg, task, fw.lake, fw.registry, ref)[:2] == (prompts, needed)
    # One named as before 2026-12-05 (problems, settings and the verifier's name in one fingerprint) is read too.
    legacy = json.dumps(
        {
            "problems": [(p.problem_id, p.prompt, p.reference) for p in problems],
            "settings": benchmark_settings(fw.cfg).__dict__,
            "verifier": task.verifier_name,
        },
        sort_keys=True,
    )
    older = dataclasses.replace(ref, run_id="e" * 32)
    assert health_prompts(fw.cfg, task, fw.lake, fw.registry, older)[1] == 0  # never evaluated
    key = evaluation_prefix(older.name, older.version, older.run_id) + hashlib.sha256(legacy.encode()).hexdigest()[:16]
    fw.lake.write_table(EVALUATIONS, key, table)
    assert health_prompts(fw.cfg, task, fw.lake, fw.registry, older)[:2] == (prompts, needed)


def test_a_rerun_after_the_audit_is_caught_then_amended(one_cycle):
    """A rerun rewrites Q1's traces after Q1 was audited: verify names the file; re-auditing appends an
    amendment that points at the record it replaces (nothing in the chain is rewritten)."""
    from flywheel_dagster import audit

    fw, instance, _ = one_cycle
    chain = audit.Chain(fw.lake)
    old_records = chain.latest_cycle_records()
    before = fw.lake.sha256("reasoning_traces", Q1)
    assert materialize(fw, instance, Q1, selection=["deployment", "reasoning_traces"]).success
    assert fw.lake.sha256("reasoning_traces", Q1) != before  # same traces, new capture times
    problems = audit.verify(fw.lake, fw.registry)
    assert f"reasoning_traces/cycle={Q1}/part-00000.parquet" in {p.where for p in problems}
    assert materialize(fw, instance, Q1, selection=["cycle_audit"]).success
    rec, sha = chain.latest_cycle_records()[Q1]
    assert rec["amends"] == old_records[Q1][1] and rec["seq"] == len(chain.raw())
    assert audit.verify(fw.lake, fw.registry) == []


def test_verify_names_a_changed_dataset_model_and_earlier_record(one_cycle):
    from pathlib import Path

    from flywheel_dagster import audit

    fw, _, _ = one_cycle
    assert audit.verify(fw.lake, fw.registry) == []
    candidate = Candidate.read(fw.lake, Q1).to_json()["version"]
    dataset = Path(fw.lake.partition_dir("training_dataset", Q1)) / "part-00000.parquet"
    weights = next(fw.registry.files_path(fw.registry.version(candidate)).glob("*.safetensors"))
    first = Path(fw.lake.root) / audit.CHAIN_TABLE / "000001.json"
    originals = {p: p.read_bytes() for p in (dataset, weights, first)}
    try:
        dataset.write_bytes(originals[dataset] + b"\0")
        flipped = bytearray(originals[weights])
        flipped[-1] ^= 1
        weights.write_bytes(bytes(flipped))
        genesis = json.loads(originals[first])
        genesis["model"]["weights_sha256"] = "0" * 64  # rewrite history: claim other base weights
        first.write_bytes(audit.canonical(genesis))
        problems = {(p.what, p.where) for p in audit.verify(fw.lake, fw.registry)}
        assert ("file", f"training_dataset/cycle={Q1}/part-00000.parquet") in problems
        assert ("model", f"{fw.registry.model_name} v{candidate}") in problems
        assert ("chain", "000002.json") in problems
        assert len(problems) == 3
    finally:
        for p, content in originals.items():
            p.write_bytes(content)
    assert audit.verify(fw.lake, fw.registry) == []


def test_lineage_walks_back_to_the_base(one_cycle):
    from flywheel_dagster import audit

    fw, _, _ = one_cycle
    candidate = Candidate.read(fw.lake, Q1).to_json()
    steps = audit.lineage(fw.lake, candidate["version"])
    assert [s["version"] for s in steps] == [candidate["version"], fw.base.ref.version]
    trained, base = steps
    assert trained["cycle"] == Q1 and trained["parent_version"] == fw.base.ref.version and trained["method"] == "sft"
    data = {(f["table"], f["file"]): f["sha256"] for f in trained["data"]}
    assert data[("training_dataset", "part-00000.parquet")] == fw.lake.sha256("training_dataset", Q1)
    assert data[("reasoning_traces", "part-00000.parquet")] == fw.lake.sha256("reasoning_traces", Q1)
    assert base["origin"] == "bootstrap base (genesis)" and base["weights_sha256"] == fw.base.weights_sha256


# A promotion to hold: a cycle from the weakened base (pass@1 about 0.15) with 8 training steps improves it
# (measured: overall delta +0.057 here), and a gate that any positive delta passes.
APPROVAL = {
    "gate": {"require_approval": True, "min_improvement": -1.0, "max_regression": 1.0},
    "training": {"epochs": 2, "batch_size": 16, "learning_rate": 0.0005},
}


def held_cycle(tiny_flywheel_factory, weakened_base, name, instance):  # noqa: ANN001, ANN201
    fw = tiny_flywheel_factory(name, APPROVAL, base=weakened_base)
    held = materialize(fw, instance, Q1)
    report = BenchmarkReport.read(fw.lake, Q1).to_json()
    assert report["gate"]["promote"], f"this test needs a candidate that passes the gate: {report['gate']}"
    return fw, held


def release(fw, instance):  # noqa: ANN001, ANN201
    from flywheel_dagster.partitions import quarterly_partitions
    from jobs.cycle import cycle_jobs

    _, release_cycle_job, _ = cycle_jobs(quarterly_partitions(Q1))

    return dg.materialize(
        [*ASSETS, *CHECKS],
        partition_key=Q1,
        resources=fw.resources,
        instance=instance,
        selection=release_cycle_job.selection,
    )


def test_promotion_waits_for_a_named_approval(tiny_flywheel_factory, weakened_base):
    """gate.require_approval: the cycle stops before champion_model until a named person approves; then the
    promotion goes ahead, and the approval lands in the audit record and in MLflow."""
    from flywheel_dagster import audit
    from flywheel_dagster.approval import ApprovalError, approval_state, record_decision

    with dg.instance_for_test() as instance:
        fw, held = held_cycle(tiny_flywheel_factory, weakened_base, "approval", instance)
        assert not held.success
        done = {e.asset_key.path[-1] for e in held.get_asset_materialization_events()}
        assert "benchmark_report" in done and "champion_model" not in done and "cycle_audit" not in done
        check = next(c for c in held.get_asset_check_evaluations() if c.check_name == "human_approval")
        assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
        assert f"flywheel approve --cycle {Q1}" in check.description
        assert approval_state(fw.cfg, fw.lake, Q1).state == "pending"
        assert fw.registry.alias(CHAMPION).version == fw.base.ref.version
        # champion_model refuses on its own too, and the next quarter cannot start while this one waits
        assert not materialize(fw, instance, Q1, selection=["champion_model"]).success
        assert fw.registry.alias(CHAMPION).version == fw.base.ref.version
        assert not materialize(fw, instance, Q2, selection=["deployment"]).success
        with pytest.raises(core.CycleOrderError, match=f"cycle {Q1} started but has not finished"):
            core.resolve_deployment(fw.registry, Q2, Q1, set(), {Q1})

        with pytest.raises(ApprovalError, match="must not be empty"):
            record_decision(fw.cfg, fw.lake, fw.registry, Q1, "approved", " ")
        record_decision(fw.cfg, fw.lake, fw.registry, Q1, "approved", "Bo Chen", "reviewed the report")
        assert release(fw, instance).success
        with pytest.raises(ApprovalError, match="already approved by Bo Chen"):
            record_decision(fw.cfg, fw.lake, fw.registry, Q1, "rejected", "Ana")
    candidate = Candidate.read(fw.lake, Q1).to_json()["version"]
    assert fw.registry.alias(CHAMPION).version == candidate
    decision = Decision.read(fw.lake, Q1).to_json()
    assert decision["decision"] == "promoted" and "approved by Bo Chen" in decision["reason"]
    rec = audit.Chain(fw.lake).latest_cycle_records()[Q1][0]
    approval = rec["approval"]["record"]
    assert rec["approval"]["required"] and approval["verdict"] == "approved"
    assert approval["by"] == "Bo Chen" and approval["note"] == "reviewed the report"
    assert approval["report_sha256"] == BenchmarkReport.sha256(fw.lake, Q1)
    assert rec["checks"]["human_approval"]["passed"]
    tags = fw.registry.client.get_run(fw.registry.cycle_run(Q1, 0)).data.tags
    assert tags["flywheel.approval"] == "approved" and tags["flywheel.approval_by"] == "Bo Chen"
    mv = fw.registry.client.get_model_version(fw.registry.model_name, candidate)
    assert mv.tags["flywheel.approval_by"] == "Bo Chen"
    assert audit.verify(fw.lake, fw.registry) == []


def test_a_rejection_keeps_the_champion(tiny_flywheel_factory, weakened_base):
    from flywheel_dagster import audit
    from flywheel_dagster.approval import record_decision

    with dg.instance_for_test() as instance:
        fw, held = held_cycle(tiny_flywheel_factory, weakened_base, "rejection", instance)
        assert not held.success
        record_decision(fw.cfg, fw.lake, fw.registry, Q1, "rejected", "Ana Ruiz", "suite sub_short looks noisy")
        assert release(fw, instance).success
    decision = Decision.read(fw.lake, Q1).to_json()
    assert decision["decision"] == "rejected" and "rejected by Ana Ruiz" in decision["reason"]
    assert "the gate had passed" in decision["reason"]
    assert fw.registry.alias(CHAMPION).version == fw.base.ref.version
    rec = audit.Chain(fw.lake).latest_cycle_records()[Q1][0]
    assert rec["approval"]["record"]["verdict"] == "rejected" and rec["approval"]["record"]["by"] == "Ana Ruiz"
    assert rec["decision"]["decision"] == "rejected"
    # Turning approvals off afterwards does not overturn the person's no on this report (it once did: a rerun
    # of champion_model then promoted on the gate's verdict alone).
    from flywheel_dagster.approval import approval_state

    off = fw.cfg.model_copy(update={"gate": fw.cfg.gate.model_copy(update={"require_approval": False})})
    assert approval_state(off, fw.lake, Q1).state == "rejected"


@pytest.mark.parametrize("key", ["2026-10-01", "2026-02-01", "2024-10-01"])
def test_every_asset_refuses_a_key_that_is_no_partition(key):
    """The Launchpad (unlike dg.materialize) launches a run for any key typed in, such as the current quarter
    before it ends: every asset's first line (assets.cycle_of) refuses it, before it trains or writes."""
    from assets import cycle_of
    from flywheel_dagster.config import load_config

    cfg = load_config()  # tests/flywheel.yaml: the first cycle is 2026-01-01
    with dg.build_asset_context(partition_key=key) as context, pytest.raises(dg.Failure) as err:
        cycle_of(context, cfg)
    assert f"cycle '{key}' is not a partition of this flywheel" in err.value.description
    assert "2026-07-01" in err.value.description  # and it names the quarters that can run
    with dg.build_asset_context(partition_key=Q1) as context:
        assert cycle_of(context, cfg) == (Q1, 0)
