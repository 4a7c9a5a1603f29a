"""The flywheel driven from the Dagster UI: `dagster dev` (webserver, daemon, code server, as `make ui` starts
it) on a bootstrapped flywheel, cycles launched through the webserver's GraphQL API the way the Materialize
button launches them. A key that is no partition and a skipped quarter fail in their first step and leave the
registry, MLflow and the lake as they were; the next cycle succeeds, and the champion, the trend run and the
audit chain move, with links both ways between Dagster and MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import CHECKS, CYCLE_ASSETS, FIRST_CYCLE

from flywheel_dagster import audit
from flywheel_dagster.cli import INSTANCE_YAML
from flywheel_dagster.records import Decision
from flywheel_dagster.registry import CHAMPION, TREND_RUN, cycle_alias
from flywheel_dagster.serving.upstream import free_port

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
SKIPPED, NOT_A_PARTITION = "2026-04-01", "2026-10-01"  # 2026-04-01 is a partition, but 2026-01-01 has not run

LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status stepStats { stepKey status } }
  }
}"""
METADATA = """
query Materialization($path: [String!]!, $partition: String!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        runId
        metadataEntries {
          label
          __typename
          ... on UrlMetadataEntry { url }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}"""


@pytest.fixture(scope="module")
def ui(untrained_flywheel_factory):  # noqa: ANN001, ANN201
    """A bootstrapped flywheel behind `dagster dev`, as `make ui` serves it. What the model answers does not
    matter here (the untrained base, so this runs while the other worker trains the test base): human anchors
    fill the training set, so the cycle trains and decides whatever the model solved."""
    small = {
        "harvest": {"min_training_examples": 64},
        "traffic": {"problems_per_cycle": 32, "samples_per_problem": 2, "temperature": 1.0},
        "benchmark": {"problems_per_suite": 6, "samples_per_problem": 1, "bootstrap_resamples": 200},
    }
    fw = untrained_flywheel_factory("ui", small)
    home = fw.root / "home"
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text(INSTANCE_YAML)
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_CONFIG": str(fw.config_path),
        "FLYWHEEL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "FLYWHEEL_TRAINING_LAUNCHER": "in_process",  # the run's own process trains (the subprocess: test_cycle)
    }
    proc = subprocess.Popen(
        [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, "dagster dev exited"
            assert time.monotonic() < deadline, "dagster dev did not come up"
            try:
                if graphql(url, "{ version }").get("version"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield fw, url
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a person stops `dagster dev`
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def graphql(url: str, query: str, **variables) -> dict:  # noqa: ANN003
    r = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def launch(url: str, partition: str) -> str:
    """What the Materialize button sends for every asset of the cycle and its checks, for one partition."""
    checks = [{"assetKey": {"path": list(k.asset_key.path)}, "name": k.name} for c in CHECKS for k in c.check_keys]
    params = {
        "mode": "default",
        "runConfigData": "{}",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        "selector": {
            "repositoryLocationName": "flywheel",
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": [name]} for name in sorted(CYCLE_ASSETS)],
            "assetCheckSelection": checks,
        },
    }
    result = graphql(url, LAUNCH, executionParams=params)["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def wait(url: str, run_id: str, timeout: float = 480) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = graphql(url, RUN, runId=run_id)["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        time.sleep(2)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


def state(fw) -> dict:  # noqa: ANN001
    """What a cycle writes: model versions, MLflow runs, lake partitions, audit entries."""
    client = fw.registry.client
    runs = client.search_runs([fw.registry.experiment_id], max_results=1000)
    return {
        "versions": sorted(v.version for v in client.search_model_versions(f"name = '{fw.registry.model_name}'")),
        "runs": sorted(r.info.run_id for r in runs),
        "lake": sorted(str(p.relative_to(fw.lake.root)) for p in Path(fw.lake.root).rglob("cycle=*")),
        "audit": len(audit.Chain(fw.lake).raw()),
    }


def failure_messages(fw, run_id: str) -> list[str]:  # noqa: ANN001
    import dagster as dg

    with dg.DagsterInstance.from_config(str(fw.root / "home" / "dagster")) as instance:
        failures = [
            e.get_dagster_event()
            for e in instance.all_logs(run_id)
            if e.is_dagster_event and e.get_dagster_event().event_type_value == "STEP_FAILURE"
        ]
    return [f.step_failure_data.user_failure_data.description or f.step_failure_data.error.message for f in failures]


def test_launches_that_cannot_run_fail_first_and_change_nothing(ui):  # noqa: ANN001
    fw, url = ui
    before = state(fw)
    for key, expected in [
        (NOT_A_PARTITION, f"cycle '{NOT_A_PARTITION}' is not a partition of this flywheel"),
        (SKIPPED, f"Run cycle {FIRST_CYCLE} (the flywheel's first) first."),
    ]:
        run_id = launch(url, key)
        run = wait(url, run_id)
        assert run["status"] == "FAILURE", (key, run)
        failed = [s["stepKey"] for s in run["stepStats"] if s["status"] == "FAILURE"]
        assert failed == ["deployment"], (key, run["stepStats"])  # the first step, before any training
        messages = failure_messages(fw, run_id)
        assert any(expected in m for m in messages), (key, messages)
    assert state(fw) == before  # no model version, MLflow run, lake partition or audit entry


def test_the_next_cycle_launched_from_the_ui_succeeds_and_links_both_ways(ui):  # noqa: ANN001
    fw, url = ui
    registry, client = fw.registry, fw.registry.client
    before = state(fw)
    run_id = launch(url, FIRST_CYCLE)
    run = wait(url, run_id)
    assert run["status"] == "SUCCESS", run["stepStats"]

    decision = Decision.read(fw.lake, FIRST_CYCLE).to_json()
    assert registry.alias(cycle_alias(FIRST_CYCLE)).version == decision["champion"]
    assert registry.alias(CHAMPION).version == decision["champion"]
    after = state(fw)
    assert len(after["versions"]) == len(before["versions"]) + 1  # the candidate
    assert after["audit"] > before["audit"]
    trend = client.get_run(registry.trend_run())
    assert trend.info.status == "FINISHED" and trend.data.tags["flywheel.kind"] == TREND_RUN
    assert any(m.step == 0 for m in client.get_metric_history(trend.info.run_id, "bench/overall/accuracy"))

    # Every MLflow run has ended; the cycle's stage runs, deploy and audit included, name the Dagster run.
    runs = client.search_runs([registry.experiment_id], max_results=1000)
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    stages = {r.data.tags.get("flywheel.stage"): r for r in runs if r.data.tags.get("flywheel.cycle") == FIRST_CYCLE}
    assert {"deploy", "harvest", "distill", "benchmark", "audit"} <= set(stages)
    for stage in ("deploy", "harvest", "distill", "benchmark", "audit"):
        tags = stages[stage].data.tags
        assert tags["dagster.run_id"] == run_id and tags["dagster.run_url"] == f"{fw.cfg.ui.dagster_url}/runs/{run_id}"
    candidate = client.get_model_version(registry.model_name, decision["candidate"])
    assert candidate.tags["dagster.run_id"] == run_id and candidate.tags["dagster.decision_run_id"] == run_id
    audit_run = stages["audit"].info.run_id
    assert [a.path for a in client.list_artifacts(audit_run)] == [audit.REPORT_FILE]

    # ... and Dagster's metadata links to them in MLflow's UI (ui.mlflow_url).
    mlflow_ui = fw.cfg.ui.mlflow_url
    links = {}
    for asset in ("deployment", "candidate_model", "benchmark_report", "champion_model", "cycle_audit"):
        mats = graphql(url, METADATA, path=[asset], partition=FIRST_CYCLE)["assetOrError"]["assetMaterializations"]
        assert mats and mats[0]["runId"] == run_id
        links[asset] = {
            e["label"]: e["url"] for e in mats[0]["metadataEntries"] if e["__typename"] == "UrlMetadataEntry"
        }
    exp = registry.experiment_id
    assert links["deployment"]["mlflow_run"] == f"{mlflow_ui}/#/experiments/{exp}/runs/{stages['deploy'].info.run_id}"
    assert links["candidate_model"]["model_version"] == (
        f"{mlflow_ui}/#/models/{registry.model_name}/versions/{decision['candidate']}"
    )
    assert links["champion_model"]["champion_version"].endswith(f"/versions/{decision['champion']}")
    assert links["cycle_audit"]["report"] == (
        f"{mlflow_ui}/#/experiments/{exp}/runs/{audit_run}/artifactPath/{audit.REPORT_FILE}"
    )
    assert all(u.startswith("http://") for asset in links.values() for u in asset.values())
