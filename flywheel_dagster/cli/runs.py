"""What the commands run: the bootstrap, the code location's jobs in process on the persistent instance, and
reads of what they left in the lake."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flywheel_dagster.cli.render import console
from flywheel_dagster.cli.session import Session
from flywheel_dagster.code_location import failure_reason, run_job

if TYPE_CHECKING:
    import dagster as dg

    from flywheel_dagster.evaluation.stats import SuiteComparison
    from flywheel_dagster.registry import ModelRef


class RunFailed(RuntimeError):
    """A job's run failed; the message names the run, the first failed step and its error."""


def bootstrap_base(s: Session) -> None:
    """Cycle 0 (unless done): build, train and register the base model; say what happened."""
    from flywheel_dagster.bootstrap import bootstrap

    with console.status("[bold]bootstrap[/bold]: building and training the cycle-0 base model"):
        res = bootstrap(s.cfg, s.registry(), s.home / "models")
    if res.created:
        took = f" in {res.train_seconds:.0f}s (train loss {res.train_loss:.3f})" if res.train_seconds else ""
        console.print(
            f"[green]bootstrap[/green]: registered {res.ref.name} v{res.ref.version} as base and champion{took}"
        )
    else:
        console.print(f"bootstrap: base already registered ({res.ref.name} v{res.ref.version}); reusing it")


def run_cycle(s: Session, defs: dg.Definitions, quarter: str) -> dict:
    """Materialize one quarter's cycle with the flywheel_cycle job on the persistent instance."""
    from flywheel_dagster.records import BenchmarkReport, Decision

    started = time.perf_counter()
    result, steps = run_job(defs, "flywheel_cycle", quarter)
    if not result.success:
        waiting = waiting_for_approval(s, quarter)
        if waiting:
            return {"waiting": waiting, "run_id": result.run_id, "seconds": time.perf_counter() - started}
        raise RunFailed(f"cycle {quarter} failed (run {result.run_id}): {failure_reason(result)}")
    return {
        "report": BenchmarkReport.read(s.lake(), quarter).to_json(),
        "decision": Decision.read(s.lake(), quarter).to_json(),
        "run_id": result.run_id,
        "seconds": time.perf_counter() - started,
        "steps": steps,
    }


def release_cycle(s: Session, defs: dg.Definitions, quarter: str) -> tuple[dict, str]:
    """After a person's decision, run the release_cycle job (approval check, champion_model, cycle_audit):
    the cycle's decision and the run's id."""
    from flywheel_dagster.records import Decision

    result, _ = run_job(defs, "release_cycle", quarter)
    if not result.success:
        raise RunFailed(f"release of cycle {quarter} failed (run {result.run_id}): {failure_reason(result)}")
    return Decision.read(s.lake(), quarter).to_json(), result.run_id


def waiting_for_approval(s: Session, quarter: str) -> str | None:
    """The reason, if the cycle stopped only because its promotion waits for a person's approval."""
    from flywheel_dagster.approval import approval_state
    from flywheel_dagster.records import BenchmarkReport

    lake = s.lake()
    if not BenchmarkReport.exists(lake, quarter):
        return None
    state = approval_state(s.cfg, lake, quarter)
    return state.reason if state.state == "pending" else None


def quarters_not_run(s: Session) -> list[str]:
    """The quarters that have ended and whose cycle has not yet materialized champion_model, in order."""
    import dagster as dg

    from flywheel_dagster.partitions import quarterly_partitions
    from flywheel_dagster.records import CHAMPION_MODEL

    with dg.DagsterInstance.get() as instance:
        done = instance.get_materialized_partitions(dg.AssetKey(CHAMPION_MODEL))
    keys = quarterly_partitions(s.cfg.schedule.start_date).get_partition_keys()
    return [q for q in keys if q not in done]


def champion_against_base(s: Session) -> tuple[ModelRef, ModelRef, list[SuiteComparison]]:
    """The champion now against the bootstrap base, on the same benchmark (both evaluations are cached)."""
    from flywheel_dagster import cycle as core
    from flywheel_dagster.registry import BASE, CHAMPION
    from flywheel_dagster.resources import EngineResource
    from flywheel_dagster.tasks import load_task

    registry, lake, task = s.registry(), s.lake(), load_task(s.cfg)
    base, champ = registry.alias(BASE), registry.alias(CHAMPION)
    engine = EngineResource()
    load, engine_id = (lambda d: engine.load(s.cfg, d)), engine.identity(s.cfg)
    a = core.evaluate_version(s.cfg, task, lake, registry, base, load, engine_id).table
    b = core.evaluate_version(s.cfg, task, lake, registry, champ, load, engine_id).table
    comparisons, _ = core.compare_and_decide(s.cfg, task, a, b)
    return base, champ, comparisons
