"""The typer app: one function a command, each resolving a session, running what it asks and printing it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flywheel_dagster.cli import render
from flywheel_dagster.cli.options import ByOpt, ConfigOpt, CycleOpt, HomeOpt, NoteOpt, PresetOpt
from flywheel_dagster.cli.render import console
from flywheel_dagster.cli.runs import (
    RunFailed,
    bootstrap_base,
    champion_against_base,
    quarters_not_run,
    release_cycle,
    run_cycle,
    waiting_for_approval,
)
from flywheel_dagster.cli.session import Session, code_location, open_session, valid_cycle
from flywheel_dagster.config import flywheel_home

if TYPE_CHECKING:
    import dagster as dg

app = typer.Typer(help="Orchestrate the self-improving reasoning-model flywheel on Dagster.", no_args_is_help=True)


@app.command()
def bootstrap(home: HomeOpt = None, config: ConfigOpt = None, preset: PresetOpt = None) -> None:
    """Cycle 0: build the base model and register it as version 1 (aliases base, champion)."""
    bootstrap_base(open_session(home, config, preset))


def _cycle_or_exit(s: Session, defs: dg.Definitions, quarter: str, label: str) -> dict:
    """run_cycle under a status line naming the cycle; exit 1 with its error if it fails."""
    with console.status(f"[bold]{label}[/bold]: deploy -> harvest -> distill -> redeploy"):
        try:
            return run_cycle(s, defs, quarter)
        except RuntimeError as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(1) from None


@app.command()
def cycle(
    quarter: Annotated[str, typer.Argument(help="the quarter's partition key, e.g. 2026-07-01")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Run one quarter's cycle through the Dagster job (bootstraps first if needed)."""
    s = open_session(home, config, preset)
    valid_cycle(s, quarter)
    bootstrap_base(s)
    row = _cycle_or_exit(s, code_location(), quarter, f"cycle {quarter}")
    if "waiting" in row:
        console.print(f"[yellow]cycle {quarter} is waiting[/yellow]: {row['waiting']}")
        return
    console.print(render.cycle_table([row]))


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
    s = open_session(home, config, preset)
    started = time.perf_counter()
    bootstrap_base(s)
    defs = code_location()
    # Cycles run in quarter order from the first: the demo runs the next ones and leaves the rest to the user.
    todo = quarters_not_run(s)
    quarters = todo[:cycles]
    if not quarters:
        console.print(f"demo: every quarter that has ended is already done in {root}; use --fresh to start over")
        raise typer.Exit(0)
    rows = []
    for i, q in enumerate(quarters, 1):
        row = _cycle_or_exit(s, defs, q, f"cycle {i}/{len(quarters)} ({q})")
        if "waiting" in row:
            console.print(f"[yellow]cycle {q} is waiting[/yellow]: {row['waiting']}; the next cycles wait for it")
            break
        rows.append(row)
        console.print(render.cycle_line(q, row))
    if not rows:
        return
    console.print(render.cycle_table(rows))
    base, champ, comparisons = champion_against_base(s)
    console.print(render.comparison_table(base.version, champ.version, comparisons))
    console.print(f"demo finished in {time.perf_counter() - started:.0f}s.")
    render.next_steps(s.cfg.ui, todo[len(rows) :])


@app.command()
def status(home: HomeOpt = None, config: ConfigOpt = None, preset: PresetOpt = None) -> None:
    """Which cycles ran, what each decided, and which model is champion."""
    from flywheel_dagster.records import BenchmarkReport, Decision
    from flywheel_dagster.registry import BASE, CHAMPION

    s = open_session(home, config, preset)
    registry, lake = s.registry(), s.lake()
    champ, base = registry.alias(CHAMPION), registry.alias(BASE)
    if base is None:
        console.print("no flywheel here yet: run `flywheel bootstrap` or `flywheel demo`")
        return
    console.print(f"{s.cfg.name}: champion v{champ.version if champ else '?'}, base v{base.version}")
    for q in BenchmarkReport.cycles(lake):
        if not Decision.exists(lake, q):
            waiting = waiting_for_approval(s, q)
            console.print(f"  {q}: " + (f"[yellow]waiting[/yellow]: {waiting}" if waiting else "not finished"))
            continue
        dec = Decision.read(lake, q).to_json()
        console.print(
            f"  {dec['cycle']}: {dec['decision']} (candidate v{dec['candidate']}; champion v{dec['champion']}): {dec['reason']}"
        )


# ---- compliance: audit records, approval, erasure ------------------------------------------------------
audit_app = typer.Typer(help="The per-cycle audit records and their hash chain.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


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

    s = open_session(home, config, preset)
    rec, sha = _read_record(s, cycle)
    if as_json:
        print(json.dumps(rec, indent=2, sort_keys=True))
        return
    render.audit_record(rec, sha)
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

    s = open_session(home, config, preset)
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

    s = open_session(home, config, preset)
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

    s = open_session(home, config, preset)
    render.lineage(audit.lineage(s.lake(), model_version))


def _decision_command(verdict: str, doc: str) -> Callable[..., None]:
    """`approve` or `reject`: record a person's decision on a cycle's candidate, then release the cycle."""

    def decide(
        cycle: CycleOpt,
        by: ByOpt,
        note: NoteOpt = "",
        home: HomeOpt = None,
        config: ConfigOpt = None,
        preset: PresetOpt = None,
    ) -> None:
        from flywheel_dagster.approval import ApprovalError, record_decision

        s = open_session(home, config, preset)
        try:
            approval = record_decision(s.cfg, s.lake(), s.registry(), cycle, verdict, by, note)
        except ApprovalError as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(2) from None
        console.print(f"cycle {cycle}: candidate v{approval['candidate_version']} {verdict} by {approval['by']}")
        defs = code_location()
        try:
            with console.status(f"[bold]cycle {cycle}[/bold]: approval check -> champion_model -> cycle_audit"):
                decision, run_id = release_cycle(s, defs, cycle)
        except RunFailed as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(1) from None
        console.print(f"cycle {cycle}: {decision['decision']}; champion is v{decision['champion']} (run {run_id})")

    decide.__doc__ = doc
    return decide


app.command("approve")(
    _decision_command(
        "approved",
        "Approve a cycle's candidate (gate.require_approval): record who and why, then promote and audit.",
    )
)
app.command("reject")(
    _decision_command(
        "rejected",
        "Reject a cycle's candidate: the champion stays; who and why go into the audit record and MLflow.",
    )
)


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

    s = open_session(home, config, preset)
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
            progress=lambda step: render.progress.print(step, style="dim", markup=False, highlight=False),
        )
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    render.erasure(res)


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

    s = open_session(home, config, preset)
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

    s = open_session(home, config, preset)
    try:
        entry, switch = roll_back(s.cfg, state_path(s.home), s.lake(), s.registry(), to_version, by, note)
    except RollbackError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1 if err.switch_failed else 2) from None
    console.print(
        f"champion is v{entry['to_version']} again (was v{entry['from_version']}); audit entry #{entry['seq']}, "
        f"sha256 {entry['sha256'][:16]}; serving: {switch.state}: {switch.reason}"
    )


@app.command()
def lab(
    folder: Annotated[Path, typer.Option(help="the lab's folder (a second run resumes it)")] = Path(".flywheel-lab"),
    cycles: Annotated[int, typer.Option(min=1, help="cycles per arm")] = 8,
    arms: Annotated[
        str | None, typer.Option(help="comma-separated arms (default: every built-in arm, then the file's)")
    ] = None,
    arms_file: Annotated[Path | None, typer.Option(help="a YAML file of your own arms (config overlays)")] = None,
    workers: Annotated[int, typer.Option(min=0, help="arms run at once, sharing the cores (0: one per core)")] = 0,
    full_size: Annotated[
        bool, typer.Option(help="the preset's own sizes (default on the playground: the lab's smaller cycles)")
    ] = False,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Run several arms of the same flywheel side by side for N cycles from one base: converge or collapse?"""
    from flywheel_dagster.config import ConfigError, load_config
    from flywheel_dagster.lab import ArmError, open_lab, run

    try:
        the_lab = open_lab(
            folder,
            load_config(config, preset=preset),
            cycles,
            [a.strip() for a in arms.split(",")] if arms else None,
            arms_file,
            full_size,
        )
    except (ConfigError, ArmError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    done = run(the_lab, workers, say=console.print)
    console.print(done.table.read_text())
    console.print(f"lab finished in {done.seconds:.0f}s: table {done.table}, figure {done.figure}")
    if any(v != "done" for v in done.outcome.values()):
        console.print("[yellow]some arms stopped; run the same command again to resume them[/yellow]")
        raise typer.Exit(1)
