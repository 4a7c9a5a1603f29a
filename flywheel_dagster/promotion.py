"""Promotion: from the gate's verdict and a person's to the champion alias, the serving switch-over and the record.

`champion_model` reads the report and the approval, calls `promote` and writes what it returns. Nothing here
knows Dagster; tests drive it with a real MLflow registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flywheel_dagster.records import ApprovalState, BenchmarkReport, Decision, GateDecision
from flywheel_dagster.registry import CHAMPION, ModelRef, Registry, cycle_alias


class PromotionRefused(RuntimeError):
    """Nothing may move yet: the report is unsound, or the promotion waits for a person's approval."""


class SwitchOver(Protocol):
    """What moving the running server to a version did (serving.rollback.Switch)."""

    state: str
    reason: str

    @property
    def failed(self) -> bool: ...

    def summary(self) -> dict: ...


class DeploymentFailed(RuntimeError):
    """The candidate passed but failed its switch-over: the previous champion keeps serving and the alias."""

    def __init__(self, message: str, switch: SwitchOver) -> None:
        super().__init__(message)
        self.switch = switch


class DecisionIncomplete(RuntimeError):
    """The server switched and (some) aliases moved, but recording the decision failed (the registry, or a bug:
    the cause is chained); running the promotion again completes it (refuse_moved_champion lets the same
    decision through)."""


@dataclass(frozen=True)
class Promotion:
    """A promotion's outcome: the decision record and the aliases it moved."""

    decision: Decision
    aliases_set: list[str]


def final_decision(cycle: str, gate: GateDecision, approval: ApprovalState) -> GateDecision:
    """The gate's verdict with a person's on top: a rejection keeps the champion, an approval promotes.

    Raises PromotionRefused when the report is unsound or an approval is still pending.
    """
    if not gate.sound:
        raise PromotionRefused(f"benchmark report for cycle {cycle} is unsound, nothing promoted: {gate.reason}")
    if approval.state == "pending":
        raise PromotionRefused(f"cycle {cycle}: {approval.reason}")
    if approval.state == "rejected":
        return GateDecision(False, True, f"{approval.reason} (the gate had passed: {gate.reason})")
    if approval.state == "approved":
        return GateDecision(True, True, f"{gate.reason}; {approval.reason}")
    return gate


def refuse_moved_champion(
    report: BenchmarkReport, promotes: bool, live: ModelRef | None, rolled_back: dict | None
) -> None:
    """PromotionRefused unless the champion is still the one the report compared the candidate with (or, for a
    promotion already made and now run again, the candidate). Otherwise the decision would put into serving a
    model never compared with the champion of now (a candidate trained and benchmarked against an older one:
    a finished cycle run again, a rollback during the cycle, two runs of one quarter), or, on a rejection,
    switch serving back to a model that was since beaten or rolled back from. A rollback made after the cycle
    finished also stands: the cycle's decision is not made again over it."""
    cycle, champion_v, candidate_v = report.cycle, report.champion.version, report.candidate.version
    if rolled_back is not None:
        raise PromotionRefused(
            f"cycle {cycle} has finished and v{rolled_back.get('to_version')} was rolled back to after it (by "
            f"{rolled_back.get('by')} at {rolled_back.get('at')}); nothing moved: the rollback stands, and the "
            "next quarter's cycle benchmarks against it"
        )
    if live is None or live.version == champion_v or (promotes and live.version == candidate_v):
        return
    raise PromotionRefused(
        f"cycle {cycle}: v{live.version} is the champion now, but this cycle benchmarked candidate v{candidate_v} "
        f"against v{champion_v}; nothing moved. The champion moved since the benchmark (a later run of this "
        "quarter or a later cycle promoted another model, or a rollback): a cycle promotes only over the model "
        "it was compared with. After a rollback during the cycle, run the cycle again from its deployment; if a "
        "newer model was promoted, this quarter's decision has been made"
    )


def promote(
    report: BenchmarkReport,
    approval: ApprovalState,
    registry: Registry,
    switch_to: Callable[[str], SwitchOver],
    links: dict[str, str],
    start_date: str,
    rolled_back: dict | None = None,
) -> Promotion:
    """Decide the cycle of `report`, switch the running server (`switch_to(version)`), then move the aliases.

    The new champion (the candidate if promoted, else the champion) takes the cycle's alias; a promoted
    candidate also takes `champion`. The candidate's version and the cycle's MLflow run get the decision as
    tags (`links`: the Dagster run's tags), and the cycle run ends. A failed switch-over moves nothing: the
    candidate is tagged deployment_failed and DeploymentFailed is raised.

    Only over the champion the report benchmarked against (refuse_moved_champion): `rolled_back`, the rollback
    made after this cycle finished (serving.rollback.rollback_after), if any.
    """
    key = report.cycle
    decision = final_decision(key, report.gate, approval)
    champion_v, candidate_v = report.champion.version, report.candidate.version
    refuse_moved_champion(report, decision.promote, registry.alias(CHAMPION), rolled_back)
    new_champion = candidate_v if decision.promote else champion_v
    switch = switch_to(new_champion)
    if switch.failed:
        registry.set_version_tags(
            candidate_v, {"flywheel.decision": "deployment_failed", "flywheel.decision_reason": switch.reason[:5000]}
        )
        raise DeploymentFailed(
            f"cycle {key}: candidate v{candidate_v} passed the gate but failed its deployment: {switch.reason}. "
            f"v{champion_v} keeps serving and stays champion; rerun champion_model once the cause is fixed",
            switch,
        )
    aliases = [CHAMPION] if decision.promote else []
    aliases.append(cycle_alias(key))
    verdict = "promoted" if decision.promote else "rejected"
    try:
        _record(registry, report, decision, verdict, new_champion, aliases, links)
    except Exception as err:  # an MLflow error part-way: say what moved and how to finish, not a bare traceback
        moved = _holding(registry, aliases, new_champion)
        raise DecisionIncomplete(
            f"cycle {key}: {verdict}; v{new_champion} serves ({switch.state}) and holds "
            f"{', '.join(repr(a) for a in moved) or 'no alias yet'}, but recording the decision in the registry "
            f"failed ({type(err).__name__}: {str(err)[:300]}; the traceback follows). The cycle is not finished "
            f"and the next one waits for it: rerun champion_model for {key} once the cause is fixed; it makes the "
            "same decision and records it"
        ) from err
    record = Decision(
        cycle=key,
        decision=verdict,
        reason=decision.reason,
        previous_champion=champion_v,
        candidate=candidate_v,
        champion=new_champion,
        alias=cycle_alias(key),
        start_date=start_date,
        approval=approval.approval,
        serving=switch.summary(),
    )
    return Promotion(record, aliases)


def _record(
    registry: Registry,
    report: BenchmarkReport,
    decision: GateDecision,
    verdict: str,
    new_champion: str,
    aliases: list[str],
    links: dict[str, str],
) -> None:
    """Move the aliases, tag the candidate and the cycle run with the decision, end the cycle run."""
    key, candidate_v = report.cycle, report.candidate.version
    for alias in aliases:
        registry.set_alias(alias, new_champion)
    registry.set_version_tags(
        candidate_v,
        {
            "flywheel.decision": verdict,
            "flywheel.decision_reason": decision.reason,
            "flywheel.decided_in_cycle": key,
            # the Dagster run that decided (dagster.run_id on the version is the one that trained it)
            "dagster.decision_run_id": links.get("dagster.run_id", ""),
            "dagster.decision_run_url": links.get("dagster.run_url", ""),
        },
    )
    cycle_run = registry.cycle_run(key, report.cycle_index)
    registry.set_tags(
        cycle_run,
        {
            "flywheel.decision": verdict,
            "flywheel.decision_reason": decision.reason,
            "flywheel.champion_version": new_champion,
            "flywheel.candidate_version": candidate_v,
            **links,
        },
    )
    registry.end_run(cycle_run)


def _holding(registry: Registry, aliases: list[str], version: str) -> list[str]:
    """Which of the aliases point at `version`, as far as the registry answers now."""
    held = []
    for alias in aliases:
        try:
            ref = registry.alias(alias)
        except Exception:  # noqa: BLE001 - the registry that just failed may fail again: say what is known
            continue
        if ref is not None and ref.version == version:
            held.append(alias)
    return held
