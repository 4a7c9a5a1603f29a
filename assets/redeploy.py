"""Redeploy: benchmark the candidate against the champion, gate, and promote only what passed."""

import base64
import json

import dagster as dg

from assets import PARTITIONS, START_DATE, cycle_of, dagster_tags, gpu_op_tags, mlflow_run_links, previous_of
from assets.deploy import deployment
from assets.distill import candidate_model
from flywheel_dagster import cycle as core
from flywheel_dagster import timing
from flywheel_dagster.approval import approval_state
from flywheel_dagster.evaluation.gate import GateDecision
from flywheel_dagster.evaluation.plots import accuracy_trend_png
from flywheel_dagster.registry import CHAMPION, cycle_alias
from flywheel_dagster.resources import (
    EngineResource,
    FlywheelConfigResource,
    LakeResource,
    MlflowResource,
    ServingResource,
)
from flywheel_dagster.serving.rollback import switch_serving
from flywheel_dagster.tasks import load_task


def _report_history(lake, key: str | None) -> list[dict]:  # noqa: ANN001
    """The report of cycle `key` and every earlier one, oldest first (for the trend plot)."""
    history, cur = [], key
    while cur is not None and lake.exists("benchmark_report", cur, core.REPORT_FILE):
        history.append(core.read_json(lake, "benchmark_report", cur, core.REPORT_FILE))
        cur = previous_of(cur)
    return history[::-1]


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="redeploy",
    code_version="1",
    deps=[candidate_model, deployment],
    pool="gpu",
    tags={"flywheel/compute": "gpu"},
    op_tags=gpu_op_tags(),
)
def benchmark_report(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    """Candidate vs champion on the fixed held-out benchmark: pass@1 per suite, paired bootstrap 95% CIs."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context)
    the_lake = lake.lake()
    registry = mlflow.registry(cfg.name)
    task = load_task(cfg)
    champion = registry.version(core.read_json(the_lake, "deployment", key, core.DEPLOYMENT_FILE)["version"])
    candidate = registry.version(core.read_json(the_lake, "candidate_model", key, core.CANDIDATE_FILE)["version"])
    load = lambda model_dir: engine.load(cfg, model_dir)  # noqa: E731
    champ_eval = core.evaluate_version(cfg, task, the_lake, registry, champion, load)
    cand_eval = core.evaluate_version(cfg, task, the_lake, registry, candidate, load)
    with timing.compute("benchmark_report"):
        comparisons, decision = core.compare_and_decide(cfg, task, champ_eval.table, cand_eval.table)
    payload = core.report_payload(key, index, champion, candidate, comparisons, decision)
    history = [*_report_history(the_lake, previous_of(key)), payload]
    png = accuracy_trend_png(history)
    files = the_lake.write_partition(
        "benchmark_report", key, {core.REPORT_FILE: json.dumps(payload, indent=2).encode(), "accuracy.png": png}
    )

    with registry.stage(key, index, "benchmark", dagster_tags(context, cfg)) as run_id:
        metrics = {}
        for c in comparisons:
            metrics |= {
                f"bench/{c.suite}/accuracy": c.candidate,
                f"bench/{c.suite}/champion_accuracy": c.champion,
                f"bench/{c.suite}/delta": c.delta,
                f"bench/{c.suite}/delta_ci_low": c.delta_ci[0],
                f"bench/{c.suite}/delta_ci_high": c.delta_ci[1],
            }
        for target in (run_id, registry.cycle_run(key, index)):
            registry.log_metrics(target, metrics, step=index)
        registry.log_trend(metrics, step=index)
        registry.client.log_artifact(run_id, str(the_lake.partition_dir("benchmark_report", key) + "/accuracy.png"))
        registry.set_tags(
            run_id, {"flywheel.gate": "pass" if decision.promote else "fail", "flywheel.gate_reason": decision.reason}
        )

    overall = next(c for c in comparisons if c.suite == "overall")
    table = "| suite | champion | candidate | delta (95% CI) |\n|---|---|---|---|\n" + "\n".join(
        f"| {c.suite} | {c.champion:.3f} | {c.candidate:.3f} | {c.delta:+.3f} ({c.delta_ci[0]:+.3f}..{c.delta_ci[1]:+.3f}) |"
        for c in comparisons
    )
    return dg.MaterializeResult(
        metadata={
            "champion": f"{champion.name} v{champion.version}",
            "candidate": f"{candidate.name} v{candidate.version}",
            "champion_accuracy": round(overall.champion, 4),
            "candidate_accuracy": round(overall.candidate, 4),
            "delta": round(overall.delta, 4),
            "delta_ci_low": round(overall.delta_ci[0], 4),
            "delta_ci_high": round(overall.delta_ci[1], 4),
            "gate": "pass" if decision.promote else "fail",
            "gate_reason": decision.reason,
            "suites": dg.MetadataValue.md(table),
            "accuracy_per_cycle": dg.MetadataValue.md(
                f"![accuracy per cycle](data:image/png;base64,{base64.b64encode(png).decode()})"
            ),
            "report_uri": dg.MetadataValue.path(files[core.REPORT_FILE].uri),
            "report_sha256": files[core.REPORT_FILE].sha256,
            "champion_eval_cached": champ_eval.cached,
            "eval_seconds": round(champ_eval.seconds + cand_eval.seconds, 1),
            **mlflow_run_links(cfg, registry, run_id),
        }
    )


def _decision_of(lake, key: str) -> tuple[dict, GateDecision]:  # noqa: ANN001
    report = core.read_json(lake, "benchmark_report", key, core.REPORT_FILE)
    gate = report["gate"]
    return report, GateDecision(gate["promote"], gate["sound"], gate["reason"])


@dg.asset_check(asset=benchmark_report, blocking=True, partitions_def=PARTITIONS, name="promotion_gate")
def promotion_gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """The gate. ERROR (blocks champion_model) if the report is unsound; WARN if the candidate is not better,
    in which case champion_model still runs and records that the champion stays."""
    report, decision = _decision_of(lake.lake(), context.partition_key)
    overall = next(s for s in report["suites"] if s["suite"] == "overall") if decision.sound else None
    meta = {"reason": decision.reason}
    if overall:
        meta |= {"delta": round(overall["delta"], 4), "delta_ci_low": round(overall["delta_ci"][0], 4)}
    if not decision.sound:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, description=decision.reason, metadata=meta
        )
    return dg.AssetCheckResult(
        passed=decision.promote,
        severity=dg.AssetCheckSeverity.WARN,
        description=("candidate may be promoted: " if decision.promote else "champion stays: ") + decision.reason,
        metadata=meta,
    )


@dg.asset_check(asset=benchmark_report, blocking=True, partitions_def=PARTITIONS, name="human_approval")
def human_approval(
    context: dg.AssetCheckExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
) -> dg.AssetCheckResult:
    """With gate.require_approval: ERROR (holds champion_model) until a named person approves the candidate with
    `flywheel approve`; WARN if they rejected it (champion_model then records that the champion stays)."""
    state = approval_state(flywheel_config.load(), lake.lake(), context.partition_key)
    meta = {"state": state.state}
    if state.approval:
        meta |= {"by": state.approval["by"], "at": state.approval["at"], "note": state.approval["note"]}
    if state.state == "pending":
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, description=state.reason, metadata=meta
        )
    return dg.AssetCheckResult(
        passed=state.state != "rejected",
        severity=dg.AssetCheckSeverity.WARN,
        description=state.reason,
        metadata=meta,
    )


@dg.asset(partitions_def=PARTITIONS, group_name="redeploy", code_version="3", deps=[benchmark_report])
def champion_model(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
    serving: ServingResource,
) -> dg.MaterializeResult:
    """Move the `champion` alias to the candidate if and only if it passed the gate (and, with
    gate.require_approval, a named person approved it); switch a running server (`flywheel serve`) to it after
    a health check with verified prompts; record the decision.

    A candidate that fails the health check never takes traffic: the previous champion keeps serving and
    keeps the alias, and this asset fails with the reason (the cycle stays unfinished)."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context)
    the_lake = lake.lake()
    registry = mlflow.registry(cfg.name)
    report, decision = _decision_of(the_lake, key)
    if not decision.sound:
        raise dg.Failure(f"benchmark report for cycle {key} is unsound, nothing promoted: {decision.reason}")
    approval = approval_state(cfg, the_lake, key)
    if approval.state == "pending":  # the blocking check holds this asset; this is the second lock
        raise dg.Failure(f"cycle {key}: {approval.reason}")
    if approval.state == "rejected":
        decision = GateDecision(False, True, f"{approval.reason} (the gate had passed: {decision.reason})")
    elif approval.state == "approved":
        decision = GateDecision(True, True, f"{decision.reason}; {approval.reason}")
    champion_v, candidate_v = report["champion"]["version"], report["candidate"]["version"]
    new_champion = candidate_v if decision.promote else champion_v
    switch = switch_serving(cfg, serving.path(), the_lake, registry, new_champion)
    if switch.failed:
        reason = (
            f"cycle {key}: candidate v{candidate_v} passed the gate but failed its deployment: {switch.reason}. "
            f"v{champion_v} keeps serving and stays champion; rerun champion_model once the cause is fixed"
        )
        registry.set_version_tags(
            candidate_v, {"flywheel.decision": "deployment_failed", "flywheel.decision_reason": switch.reason[:5000]}
        )
        raise dg.Failure(description=reason, metadata={"serving": dg.MetadataValue.json(switch.summary())})
    if decision.promote:
        registry.set_alias(CHAMPION, candidate_v)
    registry.set_alias(cycle_alias(key), new_champion)
    verdict = "promoted" if decision.promote else "rejected"
    links = dagster_tags(context, cfg)
    registry.set_version_tags(
        candidate_v,
        {
            "flywheel.decision": verdict,
            "flywheel.decision_reason": decision.reason,
            "flywheel.decided_in_cycle": key,
            # the Dagster run that decided (dagster.run_id on the version is the one that trained it)
            "dagster.decision_run_id": links["dagster.run_id"],
            "dagster.decision_run_url": links["dagster.run_url"],
        },
    )
    cycle_run = registry.cycle_run(key, index)
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
    payload = {
        "cycle": key,
        "decision": verdict,
        "reason": decision.reason,
        "previous_champion": champion_v,
        "candidate": candidate_v,
        "champion": new_champion,
        "alias": cycle_alias(key),
        "start_date": START_DATE,
        "approval": approval.approval,
        "serving": switch.summary(),
    }
    sha = core.write_json(the_lake, "champion_model", key, core.DECISION_FILE, payload)
    return dg.MaterializeResult(
        metadata={
            "decision": verdict,
            "reason": decision.reason,
            "champion": f"{registry.model_name} v{new_champion}",
            "champion_version": dg.MetadataValue.url(registry.model_version_url(cfg.ui.mlflow_url, new_champion)),
            "candidate_version": dg.MetadataValue.url(registry.model_version_url(cfg.ui.mlflow_url, candidate_v)),
            "mlflow_cycle_run": dg.MetadataValue.url(registry.run_url(cfg.ui.mlflow_url, cycle_run)),
            "previous_champion": f"v{champion_v}",
            "candidate": f"v{candidate_v}",
            "aliases_set": ", ".join(([CHAMPION] if decision.promote else []) + [cycle_alias(key)]),
            "decision_sha256": sha,
            "approval": approval.reason,
            "serving": f"{switch.state}: {switch.reason}",
        }
    )
