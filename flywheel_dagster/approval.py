"""Human approval of a promotion (`gate.require_approval`).

A candidate that passed the gate waits until a named person approves or rejects it. The decision is kept in
the lake (`approvals/cycle=<q>/approval.json`, audited with the cycle) and as MLflow tags on the cycle's run
and on the candidate's model version. It is bound to the benchmark report it was made on: a rerun that
produces a new report needs a new decision.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.partitions import cycle_index
from flywheel_dagster.records import ApprovalRecord, ApprovalState, BenchmarkReport
from flywheel_dagster.registry import Registry
from flywheel_dagster.traces.lake import Lake

VERDICTS = ("approved", "rejected")


class ApprovalError(ValueError):
    """An approval that cannot be recorded; the message says why."""


__all__ = ["VERDICTS", "ApprovalError", "ApprovalState", "approval_state", "record_decision"]


def approval_state(cfg: FlywheelConfig, lake: Lake, cycle: str) -> ApprovalState:
    """Whether the cycle's promotion may go ahead as far as people are concerned. A person's rejection of this
    report stands even after gate.require_approval is turned off: the setting says whether a promotion waits
    for a person, not that a person's no may be ignored."""
    if not cfg.gate.require_approval:
        approval, current = _recorded(lake, cycle) if BenchmarkReport.exists(lake, cycle) else (None, False)
        if current and approval["verdict"] == "rejected":  # type: ignore[index]
            return _decided(approval)  # type: ignore[arg-type]
        return ApprovalState("not_required", None, "approval not required (gate.require_approval is false)")
    report = BenchmarkReport.read(lake, cycle)
    if not (report.gate.sound and report.gate.promote):
        return ApprovalState("nothing_to_approve", None, "nothing to approve: the gate keeps the champion")
    approval, current = _recorded(lake, cycle)
    candidate = report.candidate.version
    if not current:
        stale = " (the decision on record was made on an earlier report)" if approval else ""
        return ApprovalState(
            "pending",
            None,
            f"waiting for approval of candidate v{candidate}{stale}: "
            f"flywheel approve --cycle {cycle} --by NAME --note TEXT (or flywheel reject)",
        )
    return _decided(approval)


def _recorded(lake: Lake, cycle: str) -> tuple[dict | None, bool]:
    """The decision on record for the cycle, and whether it was made on the benchmark report there now."""
    record = ApprovalRecord.find(lake, cycle)
    approval = record.to_json() if record else None
    return approval, approval is not None and approval["report_sha256"] == BenchmarkReport.sha256(lake, cycle)


def _decided(approval: dict) -> ApprovalState:
    return ApprovalState(
        approval["verdict"],
        approval,
        f"{approval['verdict']} by {approval['by']} at {approval['at']}"
        + (f": {approval['note']}" if approval["note"] else ""),
    )


def record_decision(
    cfg: FlywheelConfig,
    lake: Lake,
    registry: Registry,
    cycle: str,
    verdict: str,
    by: str,
    note: str = "",
    now: datetime | None = None,
) -> dict:
    """Record `verdict` (approved | rejected) on the cycle's candidate by the named person."""
    if verdict not in VERDICTS:
        raise ApprovalError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    if not by.strip():
        raise ApprovalError("--by: the approver's name must not be empty")
    if not cfg.gate.require_approval:
        raise ApprovalError("gate.require_approval is false in this configuration: promotions need no approval")
    if not BenchmarkReport.exists(lake, cycle):
        raise ApprovalError(f"cycle {cycle}: no benchmark report yet (run the cycle first)")
    state = approval_state(cfg, lake, cycle)
    if state.state == "nothing_to_approve":
        raise ApprovalError(f"cycle {cycle}: {state.reason}")
    if state.state in VERDICTS:
        raise ApprovalError(f"cycle {cycle} was already {state.reason}; a decision on a report is final")
    report = BenchmarkReport.read(lake, cycle)
    at = (now or datetime.now(UTC)).replace(microsecond=0).isoformat()
    record = ApprovalRecord(
        cycle=cycle,
        verdict=verdict,
        by=by.strip(),
        note=note,
        at=at,
        candidate_version=report.candidate.version,
        champion_version=report.champion.version,
        report_sha256=BenchmarkReport.sha256(lake, cycle),
    )
    record.write(lake)
    approval = record.to_json()
    tags = {
        "flywheel.approval": verdict,
        "flywheel.approval_by": approval["by"],
        "flywheel.approval_at": at,
        "flywheel.approval_note": note,
    }
    registry.set_tags(registry.cycle_run(cycle, cycle_index(cycle, cfg.schedule.start_date)), tags)
    registry.set_version_tags(approval["candidate_version"], tags)
    return approval
