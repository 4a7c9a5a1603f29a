"""The `flywheel` command: bootstrap, run cycles through Dagster, show where the flywheel stands.

    flywheel demo                 # bootstrap + three quarterly cycles on the playground preset
    flywheel bootstrap            # cycle 0: build and register the base model
    flywheel cycle 2026-07-01     # run one quarter's cycle through the Dagster job
    flywheel status               # cycles run so far, decisions, the champion

State lives under $FLYWHEEL_HOME (default .flywheel/): the Dagster instance, MLflow and the lake, the
same stores `make ui` shows. Commands run from the repository root (where workspace.yaml is), since the
Dagster code location (assets/, jobs/) is loaded from there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flywheel_dagster.config import (
    CONFIG_ENV,
    HOME_ENV,
    PRESET_ENV,
    ConfigError,
    FlywheelConfig,
    flywheel_home,
    load_config,
)

app = typer.Typer(help="Orchestrate the self-improving reasoning-model flywheel on Dagster.", no_args_is_help=True)
console = Console()

HomeOpt = Annotated[Path | None, typer.Option("--home", help="state folder (default $FLYWHEEL_HOME or .flywheel)")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="flywheel.yaml (default ./flywheel.yaml if present)")
]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="playground | smollm2 | production")]


@dataclass
class Session:
    cfg: FlywheelConfig
    home: Path

    def registry(self):  # noqa: ANN201
        from flywheel_dagster.resources import local_resources

        return local_resources(self.home)["mlflow"].registry(self.cfg.name)

    def lake(self):  # noqa: ANN201
        from flywheel_dagster.traces.lake import Lake

        return Lake(str(self.home / "lake"))


# The embedded instance (SQLite): no telemetry; runs launched from the UI wait in a queue and run one at a
# time, since cycles share the registry's champion alias: a backfill of several quarters then runs them in
# quarter order (each cycle's deployment waits for the one before it).
INSTANCE_YAML = "telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 1\n"


def ensure_instance_dir(dagster_home: Path) -> None:
    """The embedded Dagster instance's folder, with a dagster.yaml (INSTANCE_YAML) unless it has one."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    cfg = dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(INSTANCE_YAML)


def quiet_libraries() -> None:
    """Keep the terminal for the flywheel's own progress: no library progress bars, INFO logs or warnings."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "dagster", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _session(home: Path | None, config: Path | None, preset: str | None) -> Session:
    """Resolve config and home, and point the environment at them so the code location sees the same."""
    try:
        cfg = load_config(config, preset=preset)
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    root = _checked_home(home)
    ensure_instance_dir(root / "dagster")
    quiet_libraries()
    os.environ[HOME_ENV] = str(root)
    os.environ["DAGSTER_HOME"] = str(root / "dagster")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if config is not None:
        os.environ[CONFIG_ENV] = str(Path(config).resolve())
    if preset is not None:
        os.environ[PRESET_ENV] = preset
    return Session(cfg, root)


def _checked_home(home: Path | None) -> Path:
    root = flywheel_home(home)
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                what = "--home" if p == root else f"--home {root}: {p}"
                console.print(f"[red]{what} is a file, not a folder: the flywheel's state needs a folder[/red]")
                raise typer.Exit(2)
            break
    return root


def _valid_cycle(s: Session, quarter: str) -> None:
    """Refuse a key that is not a partition before anything runs (no bootstrap, no traceback)."""
    from flywheel_dagster.partitions import not_a_cycle

    problem = not_a_cycle(quarter, s.cfg.schedule.start_date)
    if problem is None:
        return
    console.print(f"[red]{problem}[/red]")
    raise typer.Exit(2)


def _code_location():  # noqa: ANN202
    """The Dagster definitions of the code location workspace.yaml names (assets/, jobs/ in this repository)."""
    from flywheel_dagster.code_location import CodeLocationError, find_workspace, load_definitions

    try:
        return load_definitions(find_workspace(Path.cwd()))
    except CodeLocationError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


def _bootstrap(s: Session) -> None:
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


def _failure_reason(result) -> str:  # noqa: ANN001 - ExecuteInProcessResult
    """The first failed step and the error its code raised."""
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            return f"{event.step_key}: {(err.cause or err).message.strip()}"
    return "see the run in the Dagster UI"


def run_cycle(s: Session, defs, quarter: str) -> dict:  # noqa: ANN001
    """Materialize one quarter's cycle with the flywheel_cycle job on the persistent instance."""
    import dagster as dg

    from flywheel_dagster import cycle as core

    job = defs.resolve_job_def("flywheel_cycle")
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            partition_key=quarter,
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
        # Asset steps by name; the asset checks (monitors, PII, overlap, gate) summed as one "checks" entry.
        assets = {k.path[-1] for k in job.asset_layer.executable_asset_keys}
        stats: dict[str, float] = {}
        for st in instance.get_run_step_stats(result.run_id):
            name = st.step_key if st.step_key in assets else "checks"
            stats[name] = stats.get(name, 0.0) + (st.end_time or 0) - (st.start_time or 0)
    if not result.success:
        waiting = _waiting_for_approval(s, quarter)
        if waiting:
            return {"waiting": waiting, "run_id": result.run_id, "seconds": time.perf_counter() - started}
        why = _failure_reason(result)
        raise RuntimeError(f"cycle {quarter} failed (run {result.run_id}): {why}")
    report = core.read_json(s.lake(), "benchmark_report", quarter, core.REPORT_FILE)
    decision = core.read_json(s.lake(), "champion_model", quarter, core.DECISION_FILE)
    return {
        "report": report,
        "decision": decision,
        "run_id": result.run_id,
        "seconds": time.perf_counter() - started,
        "steps": stats,
    }


def _waiting_for_approval(s: Session, quarter: str) -> str | None:
    """The reason, if the cycle stopped only because its promotion waits for a person's approval."""
    from flywheel_dagster import cycle as core
    from flywheel_dagster.approval import approval_state

    lake = s.lake()
    if not lake.exists("benchmark_report", quarter, core.REPORT_FILE):
        return None
    state = approval_state(s.cfg, lake, quarter)
    return state.reason if state.state == "pending" else None


def _fmt(acc: float, ci: list[float] | tuple[float, float]) -> str:
    return f"{acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _cycle_table(rows: list[dict]) -> Table:
    t = Table(title="flywheel cycles (held-out pass@1, 95% CI)")
    for col in ("cycle", "champion", "candidate", "delta (95% CI)", "decision", "time"):
        t.add_column(col)
    for r in rows:
        o = next(x for x in r["report"]["suites"] if x["suite"] == "overall")
        rep, dec = r["report"], r["decision"]
        t.add_row(
            rep["cycle"],
            f"v{rep['champion']['version']} {_fmt(o['champion'], o['champion_ci'])}",
            f"v{rep['candidate']['version']} {_fmt(o['candidate'], o['candidate_ci'])}",
            f"{o['delta']:+.3f} [{o['delta_ci'][0]:+.3f}, {o['delta_ci'][1]:+.3f}]",
            ("[green]promoted[/green]" if dec["decision"] == "promoted" else "[yellow]kept champion[/yellow]"),
            f"{r['seconds']:.0f}s",
        )
    return t


def _final_comparison(s: Session) -> None:
    """The champion now against the bootstrap base, on the same benchmark (both evaluations are cached)."""
    from flywheel_dagster import cycle as core
    from flywheel_dagster.registry import BASE, CHAMPION
    from flywheel_dagster.resources import EngineResource
    from flywheel_dagster.tasks import load_task

    registry, lake, task = s.registry(), s.lake(), load_task(s.cfg)
    base, champ = registry.alias(BASE), registry.alias(CHAMPION)
    load = lambda d: EngineResource().load(s.cfg, d)  # noqa: E731
    a = core.evaluate_version(s.cfg, task, lake, registry, base, load).table
    b = core.evaluate_version(s.cfg, task, lake, registry, champ, load).table
    comparisons, _ = core.compare_and_decide(s.cfg, task, a, b)
    t = Table(title=f"champion v{champ.version} vs bootstrap base v{base.version} (held-out pass@1)")
    for col in ("suite", "base", "champion", "gain (95% CI)"):
        t.add_column(col)
    for c in comparisons:
        t.add_row(
            c.suite,
            _fmt(c.champion, c.champion_ci),
            _fmt(c.candidate, c.candidate_ci),
            f"{c.delta:+.3f} [{c.delta_ci[0]:+.3f}, {c.delta_ci[1]:+.3f}]",
        )
    console.print(t)


@app.command()
def bootstrap(home: HomeOpt = None, config: ConfigOpt = None, preset: PresetOpt = None) -> None:
    """Cycle 0: build the base model and register it as version 1 (aliases base, champion)."""
    _bootstrap(_session(home, config, preset))


@app.command()
def cycle(
    quarter: Annotated[str, typer.Argument(help="the quarter's partition key, e.g. 2026-07-01")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Run one quarter's cycle through the Dagster job (bootstraps first if needed)."""
    s = _session(home, config, preset)
    _valid_cycle(s, quarter)
    _bootstrap(s)
    defs = _code_location()
    with console.status(f"[bold]cycle {quarter}[/bold]: deploy -> harvest -> distill -> redeploy"):
        try:
            row = run_cycle(s, defs, quarter)
        except RuntimeError as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(1) from None
    if "waiting" in row:
        console.print(f"[yellow]cycle {quarter} is waiting[/yellow]: {row['waiting']}")
        return
    console.print(_cycle_table([row]))


@app.command()
def demo(
    cycles: Annotated[int, typer.Option(help="how many quarters to run, in order from schedule.start_date")] = 3,
    fresh: Annotated[bool, typer.Option(help="delete the state folder first")] = False,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Bootstrap, then run the flywheel's next `cycles` quarters through Dagster and print what each did."""
    root = flywheel_home(home)
    if fresh and root.exists():
        console.print(f"demo: removing previous state in {root}")
        shutil.rmtree(root)
    s = _session(home, config, preset)
    started = time.perf_counter()
    _bootstrap(s)
    defs = _code_location()
    import dagster as dg

    from flywheel_dagster.partitions import quarterly_partitions

    with dg.DagsterInstance.get() as instance:
        done = instance.get_materialized_partitions(dg.AssetKey("champion_model"))
    keys = quarterly_partitions(s.cfg.schedule.start_date).get_partition_keys()
    # Cycles run in quarter order from the first: the demo runs the next ones and leaves the rest to the user.
    todo = [q for q in keys if q not in done]
    quarters = todo[:cycles]
    if not quarters:
        console.print(f"demo: every quarter that has ended is already done in {root}; use --fresh to start over")
        raise typer.Exit(0)
    rows = []
    for i, q in enumerate(quarters, 1):
        with console.status(f"[bold]cycle {i}/{len(quarters)} ({q})[/bold]: deploy -> harvest -> distill -> redeploy"):
            try:
                row = run_cycle(s, defs, q)
            except RuntimeError as err:
                console.print(f"[red]{err}[/red]")
                raise typer.Exit(1) from None
        if "waiting" in row:
            console.print(f"[yellow]cycle {q} is waiting[/yellow]: {row['waiting']}; the next cycles wait for it")
            break
        rows.append(row)
        o = next(x for x in row["report"]["suites"] if x["suite"] == "overall")
        console.print(
            f"cycle {q}: champion {_fmt(o['champion'], o['champion_ci'])}, candidate {_fmt(o['candidate'], o['candidate_ci'])}, "
            f"delta {o['delta']:+.3f} [{o['delta_ci'][0]:+.3f}, {o['delta_ci'][1]:+.3f}] -> {row['decision']['decision']} "
            f"({row['seconds']:.0f}s; " + ", ".join(f"{k} {v:.0f}s" for k, v in row["steps"].items()) + ")"
        )
    if not rows:
        return
    console.print(_cycle_table(rows))
    _final_comparison(s)
    console.print(f"demo finished in {time.perf_counter() - started:.0f}s.")
    _next_steps(s, todo[len(rows) :])


def _next_steps(s: Session, remaining: list[str]) -> None:
    """What the user can do next: the quarters left to run, from the Dagster UI or the command line."""
    ui = s.cfg.ui
    if remaining:
        nxt = remaining[0]
        more = f" ({len(remaining)} quarters have ended and wait: {', '.join(remaining)}; they run in order)"
        console.print(
            f"Next cycle: [bold]{nxt}[/bold]{more if len(remaining) > 1 else ''}. Run [bold]make ui[/bold], open "
            f"{ui.dagster_url}/locations/flywheel/jobs/flywheel_cycle/partitions (or any asset), Materialize, pick "
            f"partition {nxt} and launch; "
            f"or run `flywheel cycle {nxt}`."
        )
    else:
        console.print("Every quarter that has ended has run; the next one becomes a partition when it ends.")
    console.print(f"Look around: [bold]make ui[/bold] (Dagster {ui.dagster_url}, MLflow {ui.mlflow_url})")


@app.command()
def status(home: HomeOpt = None, config: ConfigOpt = None, preset: PresetOpt = None) -> None:
    """Which cycles ran, what each decided, and which model is champion."""
    from flywheel_dagster import cycle as core
    from flywheel_dagster.registry import BASE, CHAMPION

    s = _session(home, config, preset)
    registry, lake = s.registry(), s.lake()
    champ, base = registry.alias(CHAMPION), registry.alias(BASE)
    if base is None:
        console.print("no flywheel here yet: run `flywheel bootstrap` or `flywheel demo`")
        return
    console.print(f"{s.cfg.name}: champion v{champ.version if champ else '?'}, base v{base.version}")
    for q in lake.cycles("benchmark_report"):
        if not lake.exists("champion_model", q, core.DECISION_FILE):
            waiting = _waiting_for_approval(s, q)
            console.print(f"  {q}: " + (f"[yellow]waiting[/yellow]: {waiting}" if waiting else "not finished"))
            continue
        dec = core.read_json(lake, "champion_model", q, core.DECISION_FILE)
        console.print(
            f"  {dec['cycle']}: {dec['decision']} (candidate v{dec['candidate']}; champion v{dec['champion']}): {dec['reason']}"
        )


# ---- compliance: audit records, approval, erasure ------------------------------------------------------
audit_app = typer.Typer(help="The per-cycle audit records and their hash chain.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
CycleOpt = Annotated[str, typer.Option("--cycle", help="the quarter's partition key, e.g. 2026-07-01")]


def _read_record(s: Session, quarter: str) -> tuple[dict, str]:
    from flywheel_dagster import audit

    records = audit.Chain(s.lake()).latest_cycle_records()
    if quarter not in records:
        done = ", ".join(sorted(records)) or "none yet"
        console.print(f"[red]--cycle {quarter}: no audit record (audited cycles: {done})[/red]")
        raise typer.Exit(2)
    return records[quarter]


@audit_app.command("show")
def audit_show(
    cycle: CycleOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print the record itself")] = False,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Print a cycle's audit record: decision, approval, benchmark, checks, models, data files."""
    from flywheel_dagster import audit

    s = _session(home, config, preset)
    rec, sha = _read_record(s, cycle)
    if as_json:
        print(json.dumps(rec, indent=2, sort_keys=True))
        return
    d = rec["decision"]
    console.print(f"[bold]{rec['flywheel']} cycle {rec['cycle']}[/bold]  record #{rec['seq']} sha256 {sha}")
    console.print(
        f"  previous entry  {rec['previous_sha256']}"
        + (f"\n  amends          {rec['amends']}" if rec.get("amends") else "")
    )
    console.print(f"  decision        {d['decision']}: {d['reason']}")
    console.print(f"  champion        v{d['previous_champion']} -> v{d['champion']} (candidate v{d['candidate']})")
    console.print(f"  approval        {audit.approval_line(rec)}")
    t = rec["training"]
    console.print(f"  training        {t['method']}, {t['steps']} steps, MLflow run {t['mlflow_run_id']}")
    for role, m in rec["models"].items():
        console.print(
            f"  {role:<15} v{m['version']} weights {m['weights_sha256'][:16]}  files {m['files_sha256'][:16]}"
        )
    bench = Table(title="benchmark (pass@1, 95% CI)")
    for col in ("suite", "champion", "candidate", "delta"):
        bench.add_column(col)
    for x in rec["benchmark"]["suites"]:
        bench.add_row(
            x["suite"],
            _fmt(x["champion"], x["champion_ci"]),
            _fmt(x["candidate"], x["candidate_ci"]),
            f"{x['delta']:+.3f} [{x['delta_ci'][0]:+.3f}, {x['delta_ci'][1]:+.3f}]",
        )
    console.print(bench)
    checks = Table(title="checks")
    for col in ("check", "asset", "result", "detail"):
        checks.add_column(col)
    for name, c in rec["checks"].items():
        result = (
            c.get("status", "?") if "passed" not in c else ("passed" if c["passed"] else f"failed ({c['severity']})")
        )
        checks.add_row(name, c["asset"], result, (c.get("description") or "")[:80])
    console.print(checks)
    files = Table(title="data files")
    for col in ("table", "file", "rows", "sha256"):
        files.add_column(col)
    for f in rec["files"]:
        files.add_row(
            f["table"] + (f" [{f['partition']}]" if "partition" in f else ""),
            f["file"],
            "" if f["rows"] is None else str(f["rows"]),
            f["sha256"][:16],
        )
    console.print(files)
    console.print(f"HTML report: {s.lake().partition_dir(audit.AUDIT_TABLE, cycle)}/{audit.REPORT_FILE}")


@audit_app.command("report")
def audit_report(
    cycle: CycleOpt,
    png: Annotated[Path | None, typer.Option("--png", help="also render it to this PNG with headless Chromium")] = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Where a cycle's HTML audit report is; with --png, a screenshot of it (needs chromium on PATH)."""
    import subprocess

    from flywheel_dagster import audit

    s = _session(home, config, preset)
    _read_record(s, cycle)
    page = Path(s.lake().partition_dir(audit.AUDIT_TABLE, cycle)) / audit.REPORT_FILE
    console.print(f"HTML report: {page}")
    if png is None:
        return
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        console.print("[red]--png needs chromium (or google-chrome) on PATH[/red]")
        raise typer.Exit(2)
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={png.resolve()}",
        "--window-size=1280,2600",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    console.print(f"screenshot: {png}")


@audit_app.command("verify")
def audit_verify(home: HomeOpt = None, config: ConfigOpt = None, preset: PresetOpt = None) -> None:
    """Re-hash the chain and every file and model it refers to; name each mismatch (exit 1 if any)."""
    from flywheel_dagster import audit

    s = _session(home, config, preset)
    lake = s.lake()
    entries = audit.Chain(lake).entries()
    problems = audit.verify(lake, s.registry())
    files, records = audit.expected_state(entries)
    if problems:
        console.print(f"[red]audit verify: {len(problems)} mismatch(es)[/red]")
        for p in problems:
            console.print(f"  [red]x[/red] {p}")
        raise typer.Exit(1)
    console.print(
        f"[green]audit verify: ok[/green]: {len(entries)} chain entries, {len(records)} cycle records, "
        f"{len(files)} files and every recorded model re-hashed"
    )


@audit_app.command("lineage")
def audit_lineage(
    model_version: Annotated[str, typer.Option("--model-version", help="a registered model version, e.g. 4")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Walk back from a model version to the base: the cycles, traces (by file hash) and parents behind it."""
    from flywheel_dagster import audit

    s = _session(home, config, preset)
    steps = audit.lineage(s.lake(), model_version)
    for st in steps:
        if "cycle" not in st:
            extra = f" weights {st['weights_sha256'][:16]}" if "weights_sha256" in st else ""
            console.print(f"[bold]v{st['version']}[/bold]: {st['origin']}{extra}")
            continue
        console.print(
            f"[bold]v{st['version']}[/bold]: {st['origin']} with {st['method']} from v{st['parent_version']} "
            f"({st['decision']})"
        )
        for f in st["data"]:
            rows = "" if f["rows"] is None else f"{f['rows']:>7} rows  "
            console.print(f"    {f['table']}/{f['file']:<22} {rows}sha256 {f['sha256'][:16]}")
        for e in st["erasures"]:
            console.print(f"    erasure #{e['seq']} at {e['requested_at']} rewrote {e['files']} file(s) of this cycle")


def _decide(verdict: str, cycle: str, by: str, note: str, home, config, preset) -> None:  # noqa: ANN001
    from flywheel_dagster.approval import ApprovalError, record_decision

    s = _session(home, config, preset)
    try:
        approval = record_decision(s.cfg, s.lake(), s.registry(), cycle, verdict, by, note)
    except ApprovalError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    console.print(f"cycle {cycle}: candidate v{approval['candidate_version']} {verdict} by {approval['by']}")
    import dagster as dg

    job = _code_location().resolve_job_def("release_cycle")
    with dg.DagsterInstance.get() as instance:
        with console.status(f"[bold]cycle {cycle}[/bold]: approval check -> champion_model -> cycle_audit"):
            result = job.execute_in_process(
                partition_key=cycle,
                instance=instance,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
    if not result.success:
        console.print(f"[red]release of cycle {cycle} failed (run {result.run_id}): {_failure_reason(result)}[/red]")
        raise typer.Exit(1)
    from flywheel_dagster import cycle as core

    decision = core.read_json(s.lake(), "champion_model", cycle, core.DECISION_FILE)
    console.print(f"cycle {cycle}: {decision['decision']}; champion is v{decision['champion']} (run {result.run_id})")


NoteOpt = Annotated[str, typer.Option("--note", help="why (kept in the audit record and MLflow)")]
ByOpt = Annotated[str, typer.Option("--by", help="the person deciding, by name")]


@app.command()
def approve(
    cycle: CycleOpt,
    by: ByOpt,
    note: NoteOpt = "",
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Approve a cycle's candidate (gate.require_approval): record who and why, then promote and audit."""
    _decide("approved", cycle, by, note, home, config, preset)


@app.command()
def reject(
    cycle: CycleOpt,
    by: ByOpt,
    note: NoteOpt = "",
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Reject a cycle's candidate: the champion stays; who and why go into the audit record and MLflow."""
    _decide("rejected", cycle, by, note, home, config, preset)


@app.command()
def forget(
    user_id: Annotated[str, typer.Option("--user-id", help="the user whose traces must go")],
    by: Annotated[str, typer.Option("--by", help="who handles the request, by name")],
    note: NoteOpt = "",
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Erase a user's traces from every cycle's raw, harvested and training tables; record it in the audit
    chain; list the model versions trained on data that held them."""
    from flywheel_dagster.audit import erasure_key
    from flywheel_dagster.erasure import forget as erase
    from flywheel_dagster.serving.serve import logs_dir_for

    s = _session(home, config, preset)
    try:
        res = erase(
            s.lake(),
            s.registry(),
            user_id,
            by,
            note,
            key=erasure_key(s.home),
            log_dirs=[str(logs_dir_for(s.cfg, s.home))],
            read_only_paths=s.cfg.ingest.paths,
        )
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    t = Table(
        title=f"erasure: {res.rows_removed} rows removed (audit entry #{res.seq}, sha256 {res.entry_sha256[:16]})"
    )
    for col in ("table", "cycle", "file", "rows removed"):
        t.add_column(col)
    for (table, q, name), n in sorted(res.removed.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        t.add_row(table, q, name, str(n))
    console.print(t)
    if res.trained_on:
        console.print(
            "model versions trained on data that held these traces: "
            + ", ".join(f"v{v}" for v in res.trained_on)
            + ("; descended from them: " + ", ".join(f"v{v}" for v in res.descendants) if res.descendants else "")
            + ". Decide whether to retrain (flywheel audit lineage --model-version V shows what each used)."
        )
    else:
        console.print("no model version was trained on data that held these traces")
    for path, n in sorted(res.logs_rewritten.items()):
        console.print(f"serving log rewritten: {path} ({n} line(s) removed)")
    for path, n in sorted(res.erase_at_source.items()):
        what = "damaged, could not be read line by line" if n < 0 else f"{n} line(s) or row(s) name the user"
        console.print(f"[yellow]erase at source[/yellow]: {path} ({what}); the flywheel only reads it")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="gateway address (default serving.host)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="gateway port (default serving.port)")] = None,
    version: Annotated[str | None, typer.Option("--version", help="serve this version, not the champion")] = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Serve the champion: vLLM's OpenAI server behind a gateway that writes every chat completion into the
    lake (serving_logs/date=YYYY-MM-DD), where the next cycle ingests it (traffic.source: logs)."""
    from flywheel_dagster.serving.serve import refuse_a_second_gateway
    from flywheel_dagster.serving.serve import serve as run_server
    from flywheel_dagster.serving.upstream import UpstreamError

    s = _session(home, config, preset)
    try:
        refuse_a_second_gateway(s.home)  # before the registry and its imports
        run_server(s.cfg, s.home, s.registry(), host or s.cfg.serving.host, port or s.cfg.serving.port, version)
    except (UpstreamError, RuntimeError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None


@app.command()
def rollback(
    to_version: Annotated[str, typer.Option("--to-version", help="the model version to serve again")],
    by: ByOpt,
    note: NoteOpt = "",
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Make an earlier champion the champion again: switch the running server to it (health-checked first),
    move the `champion` alias, and record it in the audit chain; the next cycle deploys it."""
    from flywheel_dagster.serving.gateway import state_path
    from flywheel_dagster.serving.rollback import RollbackError
    from flywheel_dagster.serving.rollback import rollback as roll_back

    s = _session(home, config, preset)
    try:
        entry, switch = roll_back(s.cfg, state_path(s.home), s.lake(), s.registry(), to_version, by, note)
    except RollbackError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1 if err.switch_failed else 2) from None
    console.print(
        f"champion is v{entry['to_version']} again (was v{entry['from_version']}); audit entry #{entry['seq']}, "
        f"sha256 {entry['sha256'][:16]}; serving: {switch.state}: {switch.reason}"
    )


if __name__ == "__main__":
    app()
