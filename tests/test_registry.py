"""MLflow runs always end (a real SQLite store): a stage that raises is FAILED, its cycle run too; the trend run
is FINISHED between cycles; the UI links name the experiment, run and model version; an audit append anchors
the chain head in MLflow."""

import pytest

from flywheel_dagster.registry import Registry


@pytest.fixture
def registry(tmp_path) -> Registry:  # noqa: ANN001
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", "flywheel-test", (tmp_path / "art").as_uri())


def status(registry: Registry, run_id: str) -> str:
    return registry.client.get_run(run_id).info.status


def test_a_stage_that_raises_ends_failed_and_so_does_its_cycle_run(registry):  # noqa: ANN001
    tags = {"dagster.run_id": "r-1", "dagster.run_url": "http://127.0.0.1:3000/runs/r-1"}
    with registry.stage("2026-01-01", 0, "harvest", tags) as harvest:
        parent = registry.cycle_run("2026-01-01", 0)
        assert status(registry, harvest) == "RUNNING" and status(registry, parent) == "RUNNING"
    assert status(registry, harvest) == "FINISHED" and status(registry, parent) == "FINISHED"
    assert registry.client.get_run(parent).data.tags["dagster.run_id"] == "r-1"

    with pytest.raises(RuntimeError, match="out of memory"), registry.stage("2026-01-01", 0, "distill") as distill:
        raise RuntimeError("out of memory")
    assert status(registry, distill) == "FAILED" and status(registry, parent) == "FAILED"
    with registry.stage("2026-01-01", 0, "distill") as rerun:  # a rerun that succeeds finishes the cycle run again
        assert rerun != distill
    assert status(registry, parent) == "FINISHED"


def test_the_trend_run_is_finished_between_cycles_and_keeps_every_point(registry):  # noqa: ANN001
    registry.log_trend({"bench/overall/accuracy": 0.3}, step=0)
    registry.log_trend({"bench/overall/accuracy": 0.4}, step=1)
    run = registry.trend_run()
    assert status(registry, run) == "FINISHED"
    history = registry.client.get_metric_history(run, "bench/overall/accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.3), (1, 0.4)]


def test_links_into_the_mlflow_ui(registry):  # noqa: ANN001
    ui = "http://mlflow.example:5000"
    exp = registry.experiment_id
    assert registry.run_url(ui, "abc") == f"{ui}/#/experiments/{exp}/runs/abc"
    assert (
        registry.artifact_url(ui, "abc", "audit.html") == f"{ui}/#/experiments/{exp}/runs/abc/artifactPath/audit.html"
    )
    assert registry.model_version_url(ui, "3") == f"{ui}/#/models/flywheel-test/versions/3"


def test_every_audit_append_anchors_the_chain_head_in_mlflow(registry, tmp_path):  # noqa: ANN001
    """The one way entries reach the audit chain (cycle_audit, rollback, forget and genesis all use it): the head
    it leaves is the MLflow experiment tag that `audit verify` checks."""
    from flywheel_dagster import audit
    from flywheel_dagster.traces.lake import Lake

    chain = audit.Chain(Lake(str(tmp_path / "lake")))
    first, sha1 = audit.append_and_anchor(chain, registry, {"kind": "note", "text": "one"})
    assert registry.experiment_tag(audit.HEAD_TAG) == sha1
    second, sha2 = audit.append_and_anchor(chain, registry, {"kind": "note", "text": "two"})
    assert registry.experiment_tag(audit.HEAD_TAG) == sha2 != sha1
    assert second["seq"] == first["seq"] + 1 and second["previous_sha256"] == sha1
