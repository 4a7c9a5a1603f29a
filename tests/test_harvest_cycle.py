"""A full cycle on ingested production logs through dg.materialize.

The logs are what a gateway in front of the deployed model would have written: the real base model
answers the quarter's questions (4 samples each), plus users who paste their contact details, users who
ask benchmark questions, records from outside the quarter and broken lines.
"""

import gzip
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_cycle import Q1, materialize

from flywheel_dagster.curation import ingest, loggen
from flywheel_dagster.engines.base import SamplingSettings
from flywheel_dagster.engines.transformers_engine import TransformersEngine
from flywheel_dagster.records import Candidate
from flywheel_dagster.serving.capture import SERVING_LOGS
from flywheel_dagster.tasks.playground import PlaygroundTask

START = datetime(2026, 1, 1, tzinfo=UTC)


def write_logs(model_dir, path) -> dict:  # noqa: ANN001
    task = PlaygroundTask(benchmark_size=16)
    problems = task.traffic(0, 80)
    engine = TransformersEngine(model_dir, device="cpu", batch_size=256)
    completions = engine.generate(
        [p.prompt for p in problems], SamplingSettings(n=4, temperature=1.0, max_new_tokens=64, seed=5)
    )
    engine.close()
    records = []
    for i, c in enumerate(completions):
        p = problems[c.prompt_index]
        parsed = task.parse(c.text)
        records.append(
            loggen.record(
                p.prompt.strip(),
                c.text[len(parsed.reasoning) :].strip() if parsed.answer else c.text,
                reasoning=parsed.reasoning if parsed.answer else None,
                inline_think=i % 2 == 0,
                timestamp=START + timedelta(hours=i),
                user_id=f"u-{i % 37}",
                request_id=f"r-{i}",
                finish_reason=c.finish_reason,
            )
        )
    bench = task.benchmark(16, 20240101)[:3]
    for j, p in enumerate(bench):  # benchmark questions asked in production
        records.append(
            loggen.record(
                p.prompt.strip(), p.solution, timestamp=START + timedelta(days=3, hours=j), request_id=f"b-{j}"
            )
        )
    for j, snippet in enumerate(loggen.PII_SNIPPETS):  # contact details pasted into the question
        p = problems[j]
        records.append(
            loggen.record(
                f"{snippet}. {p.prompt.strip()}",
                p.solution,
                timestamp=START + timedelta(days=4, hours=j),
                request_id=f"pii-{j}",
            )
        )
    for j, p in enumerate(problems[10:13]):  # the erasure test's user: contact details in the answer they got
        records.append(
            loggen.record(
                p.prompt.strip(),
                p.solution,
                reasoning=f"write to {VICTIM_EMAIL}",
                timestamp=START + timedelta(days=5, hours=j),
                user_id=VICTIM,
                request_id=f"v-{j}",
            )
        )
    late = loggen.record(
        "Q:1+2", "A:3", reasoning="1+2=3:3", timestamp=datetime(2026, 4, 2, tzinfo=UTC), request_id="late"
    )
    lines = loggen.write_jsonl(path / "gateway-2026q1.jsonl", [*records, late], broken_every=50)
    with (path / "gateway-2026q1.jsonl").open("ab") as f:
        # the same user in a line whose user id does not parse (a list): quarantined, the excerpt names them
        f.write(b'{"user_id": ["' + VICTIM.encode() + b'"], "request": {"messages": []}}\n')
    return {"lines": lines + 1, "records": len(records)}


VICTIM, VICTIM_EMAIL = "u-7f3a", "mara.victim@example.org"


def serving_logs(fw) -> Path:  # noqa: ANN001
    """Where `flywheel serve` writes a day's logs in this flywheel's lake (the default ingest source)."""
    return fw.root / "home" / "lake" / SERVING_LOGS


@pytest.fixture(scope="module")
def logs_cycle(tiny_flywheel_factory, trained_flywheel):
    """A quarter of the gateway's logs, in the lake's serving_logs (no ingest.paths: the default source)."""
    fw = tiny_flywheel_factory("logs", {"traffic": {"source": "logs"}})
    logs = serving_logs(fw) / "date=2026-01-15"
    logs.mkdir(parents=True)
    written = write_logs(trained_flywheel.registry.local_path(trained_flywheel.base.ref), logs)
    with dg.instance_for_test() as instance:
        result = materialize(fw, instance, Q1)
    return fw, result, written


def test_cycle_on_ingested_logs(logs_cycle):
    fw, result, written = logs_cycle
    assert result.success
    mats = {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    rt = mats["reasoning_traces"]
    assert rt["source"].value == "logs" and rt["ingest_engine"].value == "local"
    assert rt["ingest/lines_read"].value == written["lines"]
    assert rt["ingest/lines_ingested"].value == written["records"]
    assert rt["ingest/lines_quarantined"].value == written["lines"] - written["records"]
    assert rt["ingest/quarantine/outside_window"].value == 1
    quarantine = fw.lake.read_table(ingest.QUARANTINE_TABLE, Q1)
    assert quarantine.num_rows == rt["ingest/lines_quarantined"].value

    h = mats["harvested_traces"]
    assert h["count/read"].value == written["records"]
    assert h["count/drop/decontaminated"].value == 3
    assert h["count/drop/format_violation"].value >= len(loggen.PII_SNIPPETS)
    assert h["count/positive"].value > 0 and h["count/negative"].value > 0
    assert h["harvest_state/keys_spilled_to_disk"].value == 0  # a small quarter's state stays in memory
    assert sum(h[f"pii/{k}"].value for k in ("EMAIL", "PHONE", "PERSON", "CREDIT_CARD", "IP_ADDRESS")) >= 5
    harvested = fw.lake.read_table("harvested_traces", Q1)
    prompts = " ".join(harvested.column("prompt").to_pylist())
    assert "jane.doe@example.com" not in prompts and "<EMAIL>" in prompts
    # user ids stay on the trace rows (for erasure requests), never in training text
    # 37 users of the quarter's questions and the erasure test's user (plus anonymous, null, askers)
    assert pc.count_distinct(harvested.column("user_id")).as_py() == 38
    training = fw.lake.read_table("training_dataset", Q1)
    assert not any("u-" in t for t in training.column("completion").to_pylist())

    metrics = fw.registry.client.get_run(h["mlflow_run_id"].value).data.metrics
    assert metrics["monitor/distinct_3"] == h["monitor/distinct_3"].value
    assert metrics["harvest/drop_decontaminated"] == 3

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["no_pii"].passed and checks["no_benchmark_overlap"].passed
    assert all(checks[n].passed for n in ("distinct_3", "near_duplicate_rate", "verified_accuracy"))
    assert mats["candidate_model"] and mats["champion_model"]


def test_model_based_rephrasing_keeps_only_verified_rewrites(trained_flywheel):
    """The rephraser asks the real base model for a new solution; a rewrite the verifier rejects is not used."""
    from test_harvest import _traces

    from flywheel_dagster.config import build_config
    from flywheel_dagster.curation.harvest import build_training_dataset, harvest

    task = PlaygroundTask(benchmark_size=16)
    problems = task.traffic(1, 60)
    harvested = harvest(_traces(task, [(p, p.solution) for p in problems]), task, build_config({}).harvest).harvested
    cfg = build_config({"harvest": {"anchor_fraction": 0.0, "reformat": {"as_is": 1, "rephrase": 1}}}).harvest
    engine = TransformersEngine(trained_flywheel.registry.local_path(trained_flywheel.base.ref), device="cpu")
    try:
        result = build_training_dataset(harvested, [], cfg, task, engine=engine, seed=3)
    finally:
        engine.close()
    comp = result.composition
    assert comp["strategy/rephrase"] > 10 and comp["strategy/as_is"] > 10
    assert comp.get("strategy/rephrased", 0) + comp.get("strategy/rephrase_rejected", 0) == comp["strategy/rephrase"]
    assert comp.get("strategy/rephrased", 0) > 0
    ref = {p.problem_id: p.reference for p in problems}
    for r in result.table.to_pylist():
        assert task.verify(r["completion"], ref[r["problem_id"]]).correct


def test_a_blocking_monitor_stops_the_cycle_before_training(tiny_flywheel_factory, trained_flywheel, tmp_path):
    logs = tmp_path / "logs"
    write_logs(trained_flywheel.registry.local_path(trained_flywheel.base.ref), logs)
    strict = {"verified_accuracy_min": {"warn": 0.99, "block": 0.95}}  # no real quarter is this accurate
    fw = tiny_flywheel_factory(
        "blocked",
        {"traffic": {"source": "logs"}, "ingest": {"paths": [str(logs)]}, "harvest": {"monitors": strict}},
    )
    with dg.instance_for_test() as instance:
        result = materialize(fw, instance, Q1)
    assert not result.success
    done = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert {"reasoning_traces", "harvested_traces"} <= done and "training_dataset" not in done
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "verified_accuracy")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "below the block level 0.95" in check.description


KEY = bytes(range(32))  # the deployment's erasure key (audit.erasure_key makes a random one)


def erasure_args(fw) -> dict:  # noqa: ANN001
    return {"key": KEY, "log_dirs": [str(serving_logs(fw))]}


def user_of_lines(raw, user: str) -> int:  # noqa: ANN001
    """Log lines of `user`: one per record (each record here has one choice, so one trace)."""
    return raw.column("user_id").to_pylist().count(user)


def test_verify_names_a_changed_or_added_raw_input_and_an_added_lake_file(logs_cycle):
    """The record holds each raw log file's hash; verify re-hashes them and looks for files added since, in the
    ingest paths (inside the quarter) and in the cycle's lake partitions."""
    from flywheel_dagster import audit

    fw, result, _ = logs_cycle
    assert result.success and audit.verify(fw.lake, fw.registry) == []
    log = serving_logs(fw) / "date=2026-01-15" / "gateway-2026q1.jsonl"
    record, _ = audit.Chain(fw.lake).latest_cycle_records()[Q1]
    assert [f["path"] for f in record["inputs"]["files"]] == [str(log.resolve())]
    original = log.read_bytes()

    log.write_bytes(original.replace(b'"u-1"', b'"u-2"', 1))
    (problem,) = audit.verify(fw.lake, fw.registry)
    assert (problem.what, problem.where) == ("input", str(log.resolve())) and "recorded" in problem.detail
    log.write_bytes(original)
    added = log.with_name("gateway-b.jsonl")
    added.write_bytes(original[: original.index(b"\n") + 1])
    (problem,) = audit.verify(fw.lake, fw.registry)
    assert problem.where == str(added.resolve()) and "added to cycle 2026-01-01's ingest paths" in problem.detail
    added.unlink()
    stray = Path(fw.lake.partition_dir("harvested_traces", Q1)) / "extra.parquet"
    shutil.copy(Path(fw.lake.partition_dir("harvested_traces", Q1)) / "part-00000.parquet", stray)
    (problem,) = audit.verify(fw.lake, fw.registry)
    assert problem.where == f"harvested_traces/cycle={Q1}/extra.parquet" and "not in the cycle's audit record" in str(
        problem
    )
    stray.unlink()
    assert audit.verify(fw.lake, fw.registry) == []


def test_forget_removes_a_user_everywhere_and_records_it(logs_cycle):
    """An erasure request: the user's rows leave the raw, quarantine, harvested and training tables, nobody
    else's do, the audit chain records it, and verify still holds with the rewritten files."""
    from flywheel_dagster import audit
    from flywheel_dagster.erasure import forget
    from flywheel_dagster.traces.schema import PAIRS_FILE, PROMPTS_FILE

    fw, result, _ = logs_cycle
    assert result.success and audit.verify(fw.lake, fw.registry) == []
    lake = fw.lake
    raw = lake.read_table("reasoning_traces", Q1)
    harvested = lake.read_table("harvested_traces", Q1)
    training = lake.read_table("training_dataset", Q1)
    # the user whose traces reached the training set most often
    user_of = dict(zip(harvested.column("trace_id").to_pylist(), harvested.column("user_id").to_pylist(), strict=True))
    used = [user_of.get(t) for t in training.column("trace_id").to_pylist() if t]
    victim = max({u for u in used if u}, key=used.count)
    mine = {t for t, u in user_of.items() if u == victim}
    assert mine

    res = forget(lake, fw.registry, victim, requested_by="DPO desk", note="ticket 4711", **erasure_args(fw))

    after = {t: lake.read_table(t, Q1) for t in ("reasoning_traces", "harvested_traces")}
    for t, before in (("reasoning_traces", raw), ("harvested_traces", harvested)):
        users = after[t].column("user_id").to_pylist()
        assert victim not in users
        assert after[t].num_rows == before.num_rows - before.column("user_id").to_pylist().count(victim)
        others = [r for r in before.column("trace_id").to_pylist() if user_of.get(r) != victim]
        assert sorted(after[t].column("trace_id").to_pylist()) == sorted(others)  # nobody else's row went
    new_training = lake.read_table("training_dataset", Q1)
    assert not mine & set(new_training.column("trace_id").to_pylist())
    assert new_training.num_rows == training.num_rows - sum(
        1 for t in training.column("trace_id").to_pylist() if t in mine
    )
    pairs = lake.read_table("training_dataset", Q1, PAIRS_FILE)
    assert not mine & set(pairs.column("chosen_trace_id").to_pylist() + pairs.column("rejected_trace_id").to_pylist())
    asked = set(harvested.filter(pc.equal(harvested.column("user_id"), victim)).column("prompt").to_pylist())
    assert not asked & set(lake.read_table("training_dataset", Q1, PROMPTS_FILE).column("prompt").to_pylist())

    # the candidate of Q1 was trained on the user's data
    assert res.trained_on == [lake_candidate(lake)] and res.rows_removed > 0
    entry = audit.Chain(lake).entries()[-1]
    assert entry["kind"] == "erasure" and entry["seq"] == res.seq
    assert entry["subject_sha256"] == audit.subject_sha256(victim, KEY) and victim not in json.dumps(entry)
    # the serving log lost the user's lines too, and the chain records its hash before and after
    assert [f["lines_removed"] for f in entry["inputs_rewritten"]] == [user_of_lines(raw, victim)]
    assert entry["requested_by"] == "DPO desk" and entry["note"] == "ticket 4711"
    assert entry["model_versions_trained_on_data"] == res.trained_on
    removed = {(f["table"], f["file"]): f["rows_before"] - f["rows_after"] for f in entry["rewritten"]}
    assert removed[("reasoning_traces", "part-00000.parquet")] == raw.num_rows - after["reasoning_traces"].num_rows
    assert ("training_dataset", "part-00000.parquet") in removed
    # the chain accounts for the rewrite: verify holds; a second request for the same user finds nothing
    assert audit.verify(fw.lake, fw.registry) == []
    again = forget(lake, fw.registry, victim, requested_by="DPO desk", **erasure_args(fw))
    assert again.rows_removed == 0 and again.trained_on == []
    assert audit.verify(fw.lake, fw.registry) == []


def lake_candidate(lake) -> str:  # noqa: ANN001

    return Candidate.read(lake, Q1).to_json()["version"]


def lake_text(root: Path) -> str:
    """Every file under the lake as text: Parquet tables as their rows, gzip decompressed, the rest as bytes."""
    import pyarrow.parquet as pq

    parts = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(f).to_pylist(), default=str, ensure_ascii=False))
        elif f.suffix == ".gz":
            parts.append(gzip.decompress(f.read_bytes()).decode("utf-8", "replace"))
        else:
            parts.append(f.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_forget_leaves_no_byte_of_the_user_under_the_lake(logs_cycle, tmp_path):
    """The user's id and e-mail are gone from every file under the lake: the serving log (their records and a
    line whose user id did not parse), raw traces, quarantine, harvested and training tables. A copy of the log
    outside the lake, which the flywheel only reads, is listed to be erased at source."""
    from flywheel_dagster import audit
    from flywheel_dagster.erasure import forget

    fw, result, _ = logs_cycle
    lake_root = fw.root / "home" / "lake"
    log = serving_logs(fw) / "date=2026-01-15" / "gateway-2026q1.jsonl"
    outside = tmp_path / "mirror"
    outside.mkdir()
    shutil.copy(log, outside / "copy.jsonl")
    before = lake_text(lake_root)
    assert VICTIM in before and VICTIM_EMAIL in before
    quarantined = fw.lake.read_table(ingest.QUARANTINE_TABLE, Q1).to_pylist()
    assert any(VICTIM in q["excerpt"] and q["user_id"] is None for q in quarantined)  # the unparsable line
    # What writes that did not finish left, hidden from every listing: a step killed as it wrote its partition,
    # a commit stopped before it removed the old one. Both hold the user's rows.
    # And one whose cycle has no partition (a commit killed between its two renames): the only copy, put back.
    harvested_dir = Path(fw.lake.partition_dir("harvested_traces", Q1))
    for leftover in (f".tmp-cycle={Q1}-killed", f".old-cycle={Q1}-stopped", ".old-cycle=2025-10-01-cut"):
        shutil.copytree(harvested_dir, harvested_dir.parent / leftover)

    steps = []
    res = forget(
        fw.lake,
        fw.registry,
        VICTIM,
        "DPO desk",
        **erasure_args(fw),
        read_only_paths=[str(outside)],
        progress=steps.append,
    )
    assert res.logs_rewritten == {str(log.resolve()): 4}  # three records and the broken line
    # each step is told as it starts (the CLI prints them on stderr): the log, then each partition rewritten
    assert f"rewriting {log.resolve()}" in steps and f"cycle {Q1}: scanning" in steps
    assert f"cycle {Q1}: rewriting harvested_traces (part-00000.parquet)" in steps
    assert steps.index(f"rewriting {log.resolve()}") < steps.index(f"cycle {Q1}: scanning")
    assert res.erase_at_source == {str((outside / "copy.jsonl").resolve()): 4}
    left = [s for s in steps if "left by a write that did not finish" in s]
    assert left == [
        "harvested_traces/.old-cycle=2025-10-01-cut, left by a write that did not finish: restored",
        f"harvested_traces/.old-cycle={Q1}-stopped, left by a write that did not finish: removed",
        f"harvested_traces/.tmp-cycle={Q1}-killed, left by a write that did not finish: removed",
    ]
    assert sorted(p.name for p in harvested_dir.parent.iterdir()) == ["cycle=2025-10-01", f"cycle={Q1}"]
    assert "cycle 2025-10-01: rewriting harvested_traces (part-00000.parquet)" in steps
    after = lake_text(lake_root)
    for fragment in (VICTIM, VICTIM_EMAIL, "mara.victim"):
        assert fragment not in after, fragment
    assert not (lake_root / "audit_erasure_journal").exists() or not list(
        (lake_root / "audit_erasure_journal").iterdir()
    )
    entry = audit.Chain(fw.lake).entries()[-1]
    assert entry["erase_at_source"] == res.erase_at_source and entry["inputs_rewritten"][0]["lines_removed"] == 4
    assert audit.verify(fw.lake, fw.registry) == []

    # The log restored from a backup (the copy made before the request) is not ingested again: the user is in it.
    rewritten = log.read_bytes()
    shutil.copy(outside / "copy.jsonl", log)
    with dg.instance_for_test() as instance:
        restored = materialize(fw, instance, Q1, selection=["reasoning_traces"])
    assert not restored.success
    message = restored.get_step_failure_events()[0].event_specific_data.error.message
    assert f"{log.resolve()}: holds what {log.resolve()} held before erasure request #{entry['seq']}" in message
    log.write_bytes(rewritten)
    assert VICTIM not in lake_text(lake_root)  # nothing of the restored log was written


def _warnings(instance: dg.DagsterInstance, result) -> list[str]:  # noqa: ANN001
    return [e.user_message for e in instance.all_logs(result.run_id) if e.level == 30 and e.user_message]


def test_an_erasure_request_landing_while_the_training_set_is_built_keeps_the_user_out(logs_cycle, monkeypatch):
    """A real `forget` runs while the training_dataset step is building (after it read harvested_traces, before it
    writes): the step does not write the user's rows back after the request removed them; it says why and runs
    again, and the second try, reading the rows as the request left them, writes a clean training set. (Before,
    the training set was written from the rows read before the request: the user was back.) A step that starts
    while a request runs, or after one stopped half-way, is refused as it opens its partition and, once its
    retries are spent, fails saying which request."""
    import assets
    import assets.harvest as harvest_assets
    from flywheel_dagster.erasure import JOURNAL_TABLE, forget

    monkeypatch.setattr(assets, "ERASURE_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(assets, "ERASURE_RETRIES", 2)
    fw, result, _ = logs_cycle
    assert result.success
    lake = fw.lake
    harvested = lake.read_table("harvested_traces", Q1)
    user_of = dict(zip(harvested.column("trace_id").to_pylist(), harvested.column("user_id").to_pylist(), strict=True))
    used = [user_of.get(t) for t in lake.read_table("training_dataset", Q1).column("trace_id").to_pylist() if t]
    user = sorted({u for u in used if u and u != VICTIM}, key=lambda u: (-used.count(u), u))[0]
    mine = {t for t, u in user_of.items() if u == user}

    def users_traces_in_training() -> set[str]:
        return mine & set(lake.read_table("training_dataset", Q1).column("trace_id").to_pylist())

    assert users_traces_in_training()
    build = harvest_assets.build_training_dataset
    built_with_user = []

    def build_then_erase(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = build(*args, **kwargs)  # built from the harvested rows as they are
        built_with_user.append(any(r["trace_id"] in mine for r in out.table.to_pylist()))
        if len(built_with_user) == 1:  # the request lands during the first try
            forget(lake, fw.registry, user, requested_by="DPO desk", **erasure_args(fw))
        return out

    monkeypatch.setattr(harvest_assets, "build_training_dataset", build_then_erase)
    with dg.instance_for_test() as instance:
        retried = materialize(fw, instance, Q1, selection=["training_dataset"])
        warned = _warnings(instance, retried)
    assert retried.success and built_with_user == [True, False]
    assert [e.step_key for e in retried.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"] == ["training_dataset"]
    assert any("ran while this step read its inputs" in w and "Trying again in 0 s (1 of 2)" in w for w in warned)
    assert not users_traces_in_training() and lake.read_table("training_dataset", Q1).num_rows > 0
    assert not mine & set(lake.read_table("harvested_traces", Q1)["trace_id"].to_pylist())

    monkeypatch.setattr(harvest_assets, "build_training_dataset", build)
    # A step that starts while a request runs (here, as it scans the quarter) is refused as it opens its partition,
    # and says which request (its journal, there from its start to its end: test_lake.py checks it is replaced
    # in one rename, where it was deleted and written again, a moment in which a step saw no request running).
    refused = []

    def step_during(line: str) -> None:
        if line == f"cycle {Q1}: scanning":
            with dg.instance_for_test() as instance:
                refused.append(materialize(fw, instance, Q1, selection=["harvested_traces"]))

    forget(
        lake,
        fw.registry,
        "u-nobody",
        requested_by="DPO desk",
        note="ticket 9",
        **erasure_args(fw),
        progress=step_during,
    )
    (during,) = refused
    message = during.get_step_failure_events()[0].event_specific_data.error.message
    assert not during.success and "is running, or stopped before it finished" in message
    assert "by 'DPO desk', note 'ticket 9'" in message and "(Tried 3 times, 0 s apart.)" in message
    lake.write_object(JOURNAL_TABLE, "stopped.json", b"{}")  # a request that stopped before it finished
    with dg.instance_for_test() as instance:
        held = materialize(fw, instance, Q1, selection=["harvested_traces"])
    assert not held.success
    assert "stopped before it finished" in held.get_step_failure_events()[0].event_specific_data.error.message
    lake.delete_object(JOURNAL_TABLE, "stopped.json")


def test_erasure_requests_run_one_at_a_time_and_start_under_the_lakes_lock(logs_cycle):
    """A request waits for one already running (each reads a partition and commits it rewritten: two at once
    could each put back the rows the other removed), saying so; and it writes its start under the lake's lock,
    so no partition is committed between a step's check and the request's start."""
    import threading
    import time

    from flywheel_dagster.erasure import ERASURE_LOCK, STARTED_TABLE, forget

    fw, result, _ = logs_cycle
    lake = fw.lake
    for lock, first_step in ((ERASURE_LOCK, "waiting for another erasure request to finish"), (".lock", None)):
        markers = lake.files(STARTED_TABLE)
        steps: list[str] = []
        request = threading.Thread(
            target=forget,
            args=(lake, fw.registry, "u-nobody", "DPO desk"),
            kwargs={**erasure_args(fw), "progress": steps.append},
        )
        with lake.locked(lock):
            request.start()
            time.sleep(1.0)
            assert steps == ([first_step] if first_step else []) and lake.files(STARTED_TABLE) == markers
        request.join(60)
        (newest,) = lake.files(STARTED_TABLE)  # the newest marker alone
        assert not request.is_alive() and newest not in markers
        assert f"cycle {Q1}: scanning" in steps


def test_an_erasure_request_landing_while_the_cycle_is_audited_is_not_recorded_over(logs_cycle, monkeypatch):
    """The audit step hashes the cycle's files, then appends its record: a request that rewrites them in between
    would leave a record naming the old hashes after the erasure's entry, and verify would report the files as
    changed. The step is refused instead (its entry is checked under the lock the chain's appends take), and
    run again it records the files as they are."""
    import assets
    from flywheel_dagster import audit
    from flywheel_dagster.erasure import forget

    fw, result, _ = logs_cycle
    lake = fw.lake
    harvested = lake.read_table("harvested_traces", Q1)
    user = sorted({u for u in harvested.column("user_id").to_pylist() if u and u != VICTIM})[0]
    genesis = audit.ensure_genesis
    landed = []

    def request_lands(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not landed:  # the audit step's call: the request runs now (its own call passes through)
            landed.append(True)
            forget(lake, fw.registry, user, requested_by="DPO desk", **erasure_args(fw))
        return genesis(*args, **kwargs)

    monkeypatch.setattr(audit, "ensure_genesis", request_lands)
    monkeypatch.setattr(assets, "ERASURE_RETRY_SECONDS", 0.0)
    with dg.instance_for_test() as instance:  # the whole cycle: the audit step reads the others' materializations
        retried = materialize(fw, instance, Q1)
        warned = _warnings(instance, retried)
    assert landed and retried.success
    assert [e.step_key for e in retried.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"] == ["cycle_audit"]
    assert any("cycle_audit: an erasure request (flywheel forget) ran while this step read" in w for w in warned)
    kinds = [e["kind"] for e in audit.Chain(lake).entries()]
    assert kinds[-2:] == ["erasure", "cycle"]  # no record of the hashes from before the request
    assert audit.Chain(lake).entries()[-1]["kind"] == "cycle" and audit.verify(lake, fw.registry) == []


def test_a_model_trained_while_an_erasure_request_rewrote_its_training_set_is_tagged(logs_cycle, monkeypatch):
    """A request that rewrites the training set while the training job runs on it (the job has read it) cannot
    list the model in its entry (the model does not exist yet): the candidate step finds the rewrite of what it
    read in the chain and tags the model version flywheel.trained_on_erased_data with the request's number, and
    says so in its log and metadata. A model trained with no request meanwhile has no such tag."""
    from flywheel_dagster import audit
    from flywheel_dagster.erasure import forget
    from flywheel_dagster.resources import TrainingJobResource

    fw, result, _ = logs_cycle
    lake = fw.lake
    harvested = lake.read_table("harvested_traces", Q1)
    user_of = dict(zip(harvested.column("trace_id").to_pylist(), harvested.column("user_id").to_pylist(), strict=True))
    used = sorted(
        {user_of.get(t) for t in lake.read_table("training_dataset", Q1).column("trace_id").to_pylist() if t}
        - {None, VICTIM}
    )
    user = used[0]
    train = TrainingJobResource.train
    during = []

    def train_then_erase(self, context, job):  # noqa: ANN001, ANN202
        out = train(self, context, job)
        if during:
            forget(lake, fw.registry, user, requested_by="DPO desk", **erasure_args(fw))
        return out

    monkeypatch.setattr(TrainingJobResource, "train", train_then_erase)
    versions = []
    for erase in (False, True):
        during[:] = [True] if erase else []
        with dg.instance_for_test() as instance:
            trained = materialize(fw, instance, Q1, selection=["candidate_model"])
            warned = _warnings(instance, trained)
        assert trained.success
        (mat,) = trained.get_asset_materialization_events()
        version = mat.step_materialization_data.materialization.metadata["model"].value.split(" v")[-1].split(" ")[0]
        versions.append(version)
        tags = fw.registry.version_tags(version)
        if erase:
            seq = audit.Chain(lake).entries()[-1]["seq"]
            assert tags["flywheel.trained_on_erased_data"] == f"#{seq}"
            assert mat.step_materialization_data.materialization.metadata["trained_on_erased_data"].value == f"#{seq}"
            assert any(f"erasure request(s) #{seq} rewrote while the job ran" in w for w in warned)
        else:
            assert "flywheel.trained_on_erased_data" not in tags and not warned
    assert versions[0] != versions[1]


def test_the_candidate_step_alone_refuses_a_training_set_that_holds_pii(logs_cycle):
    """no_pii blocks candidate_model only within one run: materialized alone (a UI selection, a re-execution), the
    step once trained on a training set the check had failed. It looks itself now: nothing is trained, and the
    failure names what it found (the step alone on a clean training set trains: the erasure test above)."""
    from flywheel_dagster.records import TrainingSet

    fw, _, _ = logs_cycle
    lake = fw.lake
    names = lake.files("training_dataset", Q1)
    saved = {n: lake.read_bytes("training_dataset", Q1, n) for n in names}
    examples = lake.read_table("training_dataset", Q1)
    at = examples.schema.get_field_index("completion")
    leaked = examples.column("completion").to_pylist()
    leaked[0] = "Call me on 415-555-0132. " + leaked[0]
    files = {**saved, TrainingSet.EXAMPLES: examples.set_column(at, "completion", pa.array(leaked, pa.string()))}
    versions_before = len(fw.registry.client.search_model_versions(f"name='{fw.registry.model_name}'"))
    try:
        lake.write_partition("training_dataset", Q1, files)
        with dg.instance_for_test() as instance:
            refused = materialize(fw, instance, Q1, selection=["candidate_model"])
        assert not refused.success
        (failure,) = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
        assert (
            "holds PII" in failure.step_failure_data.error.message
            and "PHONE" in failure.step_failure_data.error.message
        )
        assert len(fw.registry.client.search_model_versions(f"name='{fw.registry.model_name}'")) == versions_before
    finally:
        lake.write_partition("training_dataset", Q1, saved)
