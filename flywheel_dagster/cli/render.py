"""What the commands print: the console, cycle and comparison tables, audit records, lineage, erasures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from flywheel_dagster.evaluation.fmt import with_ci

if TYPE_CHECKING:
    from flywheel_dagster.config import UiConfig
    from flywheel_dagster.erasure import ErasureResult
    from flywheel_dagster.evaluation.stats import SuiteComparison

console = Console()
progress = Console(stderr=True)  # steps of a long command as they start: on stderr, apart from its result


def overall(report: dict) -> dict:
    """A benchmark report's (or audit record's benchmark's) row for all suites pooled."""
    return next(x for x in report["suites"] if x["suite"] == "overall")


def _accuracies(x: dict) -> tuple[str, str, str]:
    """A suite comparison's champion and candidate pass@1 and their delta, each with its 95% CI."""
    return (
        with_ci(x["champion"], x["champion_ci"]),
        with_ci(x["candidate"], x["candidate_ci"]),
        with_ci(x["delta"], x["delta_ci"], signed=True),
    )


def cycle_table(rows: list[dict]) -> Table:
    """Cycles run by run_cycle: both models' held-out pass@1, the delta, the decision, the time."""
    t = Table(title="flywheel cycles (held-out pass@1, 95% CI)")
    for col in ("cycle", "champion", "candidate", "delta (95% CI)", "decision", "time"):
        t.add_column(col)
    for r in rows:
        rep, dec = r["report"], r["decision"]
        champion, candidate, delta = _accuracies(overall(rep))
        t.add_row(
            rep["cycle"],
            f"v{rep['champion']['version']} {champion}",
            f"v{rep['candidate']['version']} {candidate}",
            delta,
            ("[green]promoted[/green]" if dec["decision"] == "promoted" else "[yellow]kept champion[/yellow]"),
            f"{r['seconds']:.0f}s",
        )
    return t


def cycle_line(quarter: str, row: dict) -> str:
    """One cycle of the demo in a line: accuracies, delta, decision, seconds in all and per step."""
    champion, candidate, delta = _accuracies(overall(row["report"]))
    return (
        f"cycle {quarter}: champion {champion}, candidate {candidate}, "
        f"delta {delta} -> {row['decision']['decision']} "
        f"({row['seconds']:.0f}s; " + ", ".join(f"{k} {v:.0f}s" for k, v in row["steps"].items()) + ")"
    )


def comparison_table(base_version: str, champion_version: str, comparisons: list[SuiteComparison]) -> Table:
    """The champion now against the bootstrap base, per suite."""
    t = Table(title=f"champion v{champion_version} vs bootstrap base v{base_version} (held-out pass@1)")
    for col in ("suite", "base", "champion", "gain (95% CI)"):
        t.add_column(col)
    for c in comparisons:
        t.add_row(c.suite, *_accuracies(c.as_dict()))
    return t


def next_steps(ui: UiConfig, remaining: list[str]) -> None:
    """What the user can do next: the quarters left to run, from the Dagster UI or the command line."""
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


def audit_record(rec: dict, sha: str) -> None:
    """A cycle's audit record: decision, approval, training, models, then benchmark, checks and files tables."""
    from flywheel_dagster import audit

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
        bench.add_row(x["suite"], *_accuracies(x))
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


def lineage(steps: list[dict]) -> None:
    """A model version's way back to the base: each version, the cycle and data behind it, erasures since."""
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


def erasure(res: ErasureResult) -> None:
    """What `forget` removed, the model versions trained on it, and the files only their owner can erase."""
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
