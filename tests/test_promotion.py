"""Promotion without Dagster, on a real MLflow registry (SQLite): the gate's verdict plus a person's decides, the
serving switch-over comes before any alias moves, and the record says what happened. Plus the stage records'
round trip through the lake and their errors on a malformed file."""

from pathlib import Path

import pytest

from flywheel_dagster.promotion import (
    DecisionIncomplete,
    DeploymentFailed,
    PromotionRefused,
    final_decision,
    promote,
)
from flywheel_dagster.records import (
    ApprovalState,
    BenchmarkReport,
    Candidate,
    Decision,
    GateDecision,
    ModelId,
    StageRecordError,
)
from flywheel_dagster.registry import CHAMPION, Registry, cycle_alias
from flywheel_dagster.serving.rollback import Switch
from flywheel_dagster.traces.lake import Lake

Q = "2026-01-01"
NOT_REQUIRED = ApprovalState("not_required", None, "approval not required (gate.require_approval is false)")
LINKS = {"dagster.run_id": "run-7", "dagster.run_url": "http://127.0.0.1:3000/runs/run-7"}
PASS = GateDecision(True, True, "overall delta +0.050 (95% CI +0.020..+0.080), no suite regressed")
FAIL = GateDecision(False, True, "overall delta -0.010: the candidate is not better than the champion")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """Two registered versions: v1 the champion, v2 this cycle's candidate."""
    reg = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", "flywheel-test", (tmp_path / "art").as_uri())
    for name in ("v1", "v2"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(f'{{"name": "{name}"}}')
        reg.register_model_dir(reg.stage_run("2025-10-01", 0, f"train-{name}"), folder)
    reg.set_alias(CHAMPION, "1")
    return reg


def report(gate: GateDecision) -> BenchmarkReport:
    overall = {"suite": "overall", "champion": 0.4, "candidate": 0.45, "delta": 0.05, "delta_ci": [0.02, 0.08]}
    return BenchmarkReport(Q, 1, ModelId("flywheel-test", "1"), ModelId("flywheel-test", "2"), [overall], gate)


class Server:
    """The switch-over as promote sees it: records the versions asked for and answers with `switch`."""

    def __init__(self, switch: Switch) -> None:
        self.switch, self.asked = switch, []

    def __call__(self, version: str) -> Switch:
        self.asked.append(version)
        return self.switch


def test_a_candidate_that_passed_becomes_champion_and_the_record_says_so(registry):  # noqa: ANN001
    server = Server(Switch("switched", "v2 serves after 4/4 health prompts"))
    done = promote(report(PASS), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    assert server.asked == ["2"]
    assert registry.alias(CHAMPION).version == "2" and registry.alias(cycle_alias(Q)).version == "2"
    assert done.aliases_set == [CHAMPION, cycle_alias(Q)]
    d = done.decision
    assert (d.decision, d.previous_champion, d.candidate, d.champion) == ("promoted", "1", "2", "2")
    assert d.reason == PASS.reason and d.serving == {
        "state": "switched",
        "reason": "v2 serves after 4/4 health prompts",
    }
    tags = registry.version_tags("2")
    assert tags["flywheel.decision"] == "promoted" and tags["dagster.decision_run_id"] == "run-7"
    run = registry.client.get_run(registry.cycle_run(Q, 1))
    assert run.info.status == "FINISHED" and run.data.tags["flywheel.champion_version"] == "2"


def test_a_candidate_that_failed_the_gate_leaves_the_champion_where_it_was(registry):  # noqa: ANN001
    server = Server(Switch("no_server", "no gateway runs for this flywheel"))
    done = promote(report(FAIL), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    assert server.asked == ["1"]  # the champion keeps (or takes back) the traffic
    assert registry.alias(CHAMPION).version == "1" and registry.alias(cycle_alias(Q)).version == "1"
    assert done.aliases_set == [cycle_alias(Q)]
    assert (done.decision.decision, done.decision.champion) == ("rejected", "1")
    assert registry.version_tags("2")["flywheel.decision"] == "rejected"


def test_an_unsound_report_or_a_pending_approval_moves_nothing(registry):  # noqa: ANN001
    server = Server(Switch("switched", "unused"))
    unsound = GateDecision(False, False, "benchmark report is incomplete: missing suites ['overall']")
    with pytest.raises(PromotionRefused, match="unsound, nothing promoted: benchmark report is incomplete"):
        promote(report(unsound), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    pending = ApprovalState("pending", None, "waiting for approval of candidate v2: flywheel approve ...")
    with pytest.raises(PromotionRefused, match="waiting for approval of candidate v2"):
        promote(report(PASS), pending, registry, server, LINKS, "2026-01-01")
    assert server.asked == [] and registry.alias(cycle_alias(Q)) is None and registry.alias(CHAMPION).version == "1"


def test_a_persons_verdict_overrides_and_is_named_in_the_reason():
    approved = ApprovalState("approved", {"by": "ada"}, "approved by ada at 2026-04-02T10:00:00+00:00")
    rejected = ApprovalState("rejected", {"by": "bob"}, "rejected by bob at 2026-04-02T10:00:00+00:00: too risky")
    assert final_decision(Q, PASS, approved) == GateDecision(True, True, f"{PASS.reason}; {approved.reason}")
    assert final_decision(Q, PASS, rejected) == GateDecision(
        False, True, f"{rejected.reason} (the gate had passed: {PASS.reason})"
    )
    assert final_decision(Q, FAIL, NOT_REQUIRED) == FAIL


def test_a_failed_switch_over_keeps_the_old_champion_and_tags_the_candidate(registry):  # noqa: ANN001
    server = Server(Switch("failed", "health check: 1 of 4 verified prompts answered right, 3 needed"))
    with pytest.raises(DeploymentFailed, match="v1 keeps serving and stays champion") as err:
        promote(report(PASS), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    assert err.value.switch.summary()["state"] == "failed"
    assert registry.alias(CHAMPION).version == "1" and registry.alias(cycle_alias(Q)) is None
    assert registry.version_tags("2")["flywheel.decision"] == "deployment_failed"


def test_a_registry_failure_after_the_switch_says_what_moved_and_a_rerun_completes_it(registry, monkeypatch):  # noqa: ANN001
    """MLflow fails after `champion` moved (tagging the candidate): the error names the cycle, the version that
    serves, the aliases it holds and the step to take; promote run again makes the same decision and records it."""
    server = Server(Switch("switched", "v2 serves after 4/4 health prompts"))
    real = registry.set_version_tags

    def down(version, tags):  # noqa: ANN001, ANN202 - the registry's outage, injected: it cannot be had for real
        raise ConnectionError("registry unreachable")

    monkeypatch.setattr(registry, "set_version_tags", down)
    with pytest.raises(DecisionIncomplete) as err:
        promote(report(PASS), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    msg = str(err.value)
    assert f"cycle {Q}: promoted; v2 serves (switched)" in msg
    assert f"holds 'champion', '{cycle_alias(Q)}'" in msg and "ConnectionError: registry unreachable" in msg
    assert isinstance(err.value.__cause__, ConnectionError)
    assert f"rerun champion_model for {Q}" in msg
    assert registry.alias(CHAMPION).version == "2" and "flywheel.decision" not in registry.version_tags("2")
    monkeypatch.setattr(registry, "set_version_tags", real)
    done = promote(report(PASS), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    assert (done.decision.decision, done.decision.champion) == ("promoted", "2") and server.asked == ["2", "2"]
    assert registry.version_tags("2")["flywheel.decision"] == "promoted"


def test_a_decision_is_made_only_over_the_champion_the_report_compared_with(registry, tmp_path):  # noqa: ANN001
    """A report about candidate v2 against v1 moves nothing once v3 is the champion (a finished cycle run again,
    two runs of a quarter, a rollback during the cycle): not a promotion of v2, never compared with v3, and
    not a rejection that switches serving back to v1. The same decision made again is still made."""
    folder = tmp_path / "v3"
    folder.mkdir()
    (folder / "config.json").write_text('{"name": "v3"}')
    registry.register_model_dir(registry.stage_run("2025-10-01", 0, "train-v3"), folder)
    server = Server(Switch("switched", "v2 serves after 4/4 health prompts"))
    done = promote(report(PASS), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    again = promote(report(PASS), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")  # a rerun: the same
    assert (done.decision.champion, again.decision.champion, registry.alias(CHAMPION).version) == ("2", "2", "2")

    registry.set_alias(CHAMPION, "3")  # a later promotion, or a rollback
    server.asked.clear()
    for gate in (PASS, FAIL):
        with pytest.raises(
            PromotionRefused, match="v3 is the champion now, but this cycle benchmarked candidate v2 against v1"
        ):
            promote(report(gate), NOT_REQUIRED, registry, server, LINKS, "2026-01-01")
    assert server.asked == [] and registry.alias(CHAMPION).version == "3"


def test_a_rollback_after_the_cycle_stands_against_its_decision_made_again(registry):  # noqa: ANN001
    """champion_model run again for a quarter after which someone rolled back: the rollback stands."""
    rollback = {"kind": "rollback", "to_version": "1", "by": "ada", "at": "2026-04-03T09:00:00Z", "after_cycle": Q}
    server = Server(Switch("switched", "unused"))
    with pytest.raises(PromotionRefused, match="v1 was rolled back to after it \\(by ada at 2026-04-03T09:00:00Z\\)"):
        promote(report(PASS), NOT_REQUIRED, registry, server, LINKS, "2026-01-01", rolled_back=rollback)
    assert server.asked == [] and registry.alias(CHAMPION).version == "1" and registry.alias(cycle_alias(Q)) is None


def test_a_report_about_other_models_than_the_cycle_names_now_is_stale():
    """benchmark_report compared v2 with v1; a candidate_model or deployment run again since names another."""
    from flywheel_dagster.records import stale_report

    assert stale_report(report(PASS), "1", "2") is None and stale_report(report(PASS), None, None) is None
    assert "candidate_model names v4 now (it ran again after the report)" in stale_report(report(PASS), "1", "4")
    assert "deployment names v3 now" in stale_report(report(PASS), "3", "2")


def test_stage_records_round_trip_and_name_what_is_wrong(tmp_path: Path):
    lake = Lake(str(tmp_path / "lake"))
    original = report(PASS)
    written = original.write(lake, {BenchmarkReport.PLOT_FILE: b"png"})
    assert BenchmarkReport.read(lake, Q) == original and written.sha256 == BenchmarkReport.sha256(lake, Q)
    assert lake.read_bytes(BenchmarkReport.TABLE, Q, BenchmarkReport.PLOT_FILE) == b"png"
    assert original.overall["delta"] == 0.05 and Decision.find(lake, Q) is None
    lake.write_partition(Candidate.TABLE, Q, {Candidate.FILE: b'{"cycle": "2026-01-01", "version": "2"}'})
    with pytest.raises(StageRecordError, match=r"candidate_model/cycle=2026-01-01/candidate.json: missing \['run_id'"):
        Candidate.read(lake, Q)
    lake.write_partition(Decision.TABLE, Q, {Decision.FILE: b"{not json"})
    with pytest.raises(StageRecordError, match=r"champion_model/cycle=2026-01-01/decision.json: not JSON"):
        Decision.read(lake, Q)
