"""Redeploy: benchmark the candidate against the champion, gate, and promote only what passed."""

import base64

import dagster as dg

from assets import Stage, dagster_tags, mlflow_run_links, open_cycle, previous_of
from flywheel_dagster import cycle as core
from flywheel_dagster import timing
from flywheel_dagster.approval import approval_state
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.evaluation.fmt import with_ci
from flywheel_dagster.evaluation.plots import accuracy_trend_png
from flywheel_dagster.promotion import DecisionIncomplete, DeploymentFailed, PromotionRefused, promote
from flywheel_dagster.records import (
    BENCHMARK_REPORT,
    CANDIDATE_MODEL,
    DEPLOYMENT,
    BenchmarkReport,
    Candidate,
    Deployment,
    stale_report,
)
from flywheel_dagster.resources import (
    EngineResource,
    FlywheelConfigResource,
    LakeResource,
    MlflowResource,
    ServingResource,
)
from flywheel_dagster.serving.rollback import rollback_after, switch_serving
from flywheel_dagster.tasks import load_task
from flywheel_dagster.tasks.base import verifier_id
from flywheel_dagster.traces.lake import Lake


def build(stage: Stage) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """benchmark_report (on a GPU), its two blocking checks, and champion_model behind them."""
    assets = [
        stage.asset("redeploy", "1", deps=[CANDIDATE_MODEL, DEPLOYMENT], gpu=True)(benchmark_report),
        stage.asset("redeploy", "3", deps=[BENCHMARK_REPORT])(champion_model),
    ]
    checks = [
        stage.check(BENCHMARK_REPORT, "promotion_gate")(promotion_gate),
        stage.check(BENCHMARK_REPORT, "human_approval")(human_approval),
    ]
    return assets, checks


def _report_history(cfg: FlywheelConfig, lake: Lake, key: str | None) -> list[dict]:
    """The report of cycle `key` and every earlier one, oldest first (for the trend plot)."""
    history, cur = [], key
    while cur is not None and BenchmarkReport.exists(lake, cur):
        history.append(BenchmarkReport.read(lake, cur).to_json())
        cur = previous_of(cur, cfg)
    return history[::-1]


def benchmark_report(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    """Candidate vs champion on the fixed held-out benchmark: pass@1 per suite, paired bootstrap 95% CIs."""
    cfg, key, index, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
    task = load_task(cfg)
    champion = registry.version(Deployment.read(the_lake, key).version)
    candidate = registry.version(Candidate.read(the_lake, key).version)
    load = lambda model_dir: engine.load(cfg, model_dir)  # noqa: E731
    engine_id = engine.identity(cfg)
    champ_eval = core.evaluate_version(cfg, task, the_lake, registry, champion, load, engine_id)
    cand_eval = core.evaluate_version(cfg, task, the_lake, registry, candidate, load, engine_id)
    with timing.compute(BENCHMARK_REPORT):
        comparisons, decision = core.compare_and_decide(cfg, task, champ_eval.table, cand_eval.table)
    report = core.benchmark_report(key, index, champion, candidate, comparisons, decision)
    png = accuracy_trend_png([*_report_history(cfg, the_lake, previous_of(key, cfg)), report.to_json()])
    written = report.write(the_lake, {BenchmarkReport.PLOT_FILE: png})

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
        registry.log_artifact(
            run_id, f"{the_lake.partition_dir(BenchmarkReport.TABLE, key)}/{BenchmarkReport.PLOT_FILE}"
        )
        registry.set_tags(
            run_id, {"flywheel.gate": "pass" if decision.promote else "fail", "flywheel.gate_reason": decision.reason}
        )

    overall = next(c for c in comparisons if c.suite == "overall")
    table = "| suite | champion | candidate | delta (95% CI) |\n|---|---|---|---|\n" + "\n".join(
        f"| {c.suite} | {c.champion:.3f} | {c.candidate:.3f} | {with_ci(c.delta, c.delta_ci, signed=True, dots=True)} |"
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
            "report_uri": dg.MetadataValue.path(written.uri),
            "report_sha256": written.sha256,
            "champion_eval_cached": champ_eval.cached,
            "evaluated_by": f"{engine_id}, verifier {verifier_id(task)}",
            "eval_seconds": round(champ_eval.seconds + cand_eval.seconds, 1),
            **mlflow_run_links(cfg, registry, run_id),
        }
    )


def promotion_gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """The gate. ERROR (blocks champion_model) if the report is unsound; WARN if the candidate is not better,
    in which case champion_model still runs and records that the champion stays."""
    report = BenchmarkReport.read(lake.lake(), context.partition_key)
    decision = report.gate
    overall = report.overall if decision.sound else None
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
    cfg, key, _, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
    report = BenchmarkReport.read(the_lake, key)
    deployed, candidate = (record.find(the_lake, key) for record in (Deployment, Candidate))
    stale = stale_report(report, deployed and deployed.version, candidate and candidate.version)
    if stale:
        raise dg.Failure(description=stale)
    links = dagster_tags(context, cfg)
    approval = approval_state(cfg, the_lake, key)
    try:
        done = promote(
            report,
            approval,
            registry,
            lambda version: switch_serving(cfg, serving.path(), the_lake, registry, version),
            links,
            cfg.schedule.start_date,
            rolled_back=rollback_after(the_lake, key),
        )
    except PromotionRefused as err:
        raise dg.Failure(description=str(err)) from None
    except DecisionIncomplete as err:  # the cause's traceback stays: it may be a bug rather than an outage
        raise dg.Failure(description=str(err)) from err
    except DeploymentFailed as err:
        serving_meta = {"serving": dg.MetadataValue.json(err.switch.summary())}
        raise dg.Failure(description=str(err), metadata=serving_meta) from None
    decision = done.decision
    sha = decision.write(the_lake).sha256
    cycle_run = registry.cycle_run(key, report.cycle_index)
    return dg.MaterializeResult(
        metadata={
            "decision": decision.decision,
            "reason": decision.reason,
            "champion": f"{registry.model_name} v{decision.champion}",
            "champion_version": dg.MetadataValue.url(registry.model_version_url(cfg.ui.mlflow_url, decision.champion)),
            "candidate_version": dg.MetadataValue.url(
                registry.model_version_url(cfg.ui.mlflow_url, decision.candidate)
            ),
            "mlflow_cycle_run": dg.MetadataValue.url(registry.run_url(cfg.ui.mlflow_url, cycle_run)),
            "previous_champion": f"v{decision.previous_champion}",
            "candidate": f"v{decision.candidate}",
            "aliases_set": ", ".join(done.aliases_set),
            "decision_sha256": sha,
            "approval": approval.reason,
            "serving": f"{decision.serving['state']}: {decision.serving['reason']}",
        }
    )
