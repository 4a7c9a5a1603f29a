"""The audit record as a person reads it: one cycle's HTML page (decision first, then the evidence), and the
line that says who approved. Pure rendering of a record the chain holds."""

from __future__ import annotations


def approval_line(record: dict) -> str:
    a = record["approval"]
    if a["record"]:
        r = a["record"]
        return f"{r['verdict']} by {r['by']} at {r['at']}" + (f": {r['note']}" if r["note"] else "")
    return "nothing to approve (the gate kept the champion)" if a["required"] else "not required by configuration"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#1d2433;padding:0 1em}
h1{font-size:1.5em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.6em 0 .5em;border-bottom:1px solid #d8dde6;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;margin:.3em 0} th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #eceff4;vertical-align:top}
th{background:#f4f6fa;font-weight:600} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.badge{display:inline-block;padding:.15em .6em;border-radius:1em;font-weight:600;font-size:.85em}
.ok{background:#dcf5e3;color:#12622b}.warn{background:#fdf0d0;color:#7a5300}.bad{background:#fbdcdc;color:#8a1616}.na{background:#eceff4;color:#4a5468}
.summary{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1.2em;background:#f8f9fc;border:1px solid #e1e5ee;border-radius:8px;padding:1em}
.summary div:nth-child(odd){color:#5a6478}.muted{color:#6b7487}
"""


def render_html(entry: dict, sha: str) -> str:
    """A human-readable page for one cycle record: decision first, then evidence."""
    from html import escape as e

    def badge(text: str, kind: str) -> str:
        return f'<span class="badge {kind}">{e(text)}</span>'

    def short(h: str | None) -> str:
        return f'<span class="hash" title="{e(h)}">{e(h[:16])}…</span>' if h else '<span class="muted">none</span>'

    def table(head: list[str], rows: list[list[str]], num: set[int] = frozenset()) -> str:
        th = "".join(f'<th class="num">{h}</th>' if i in num else f"<th>{h}</th>" for i, h in enumerate(head))
        body = "".join(
            "<tr>"
            + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>" for i, c in enumerate(r))
            + "</tr>"
            for r in rows
        )
        return f"<table><tr>{th}</tr>{body}</table>"

    dec = entry["decision"]
    promoted = dec["decision"] == "promoted"
    summary = [
        ("Decision", badge(dec["decision"], "ok" if promoted else "warn") + " " + e(dec["reason"])),
        ("Champion", f"v{e(dec['previous_champion'])} → v{e(dec['champion'])} (candidate v{e(dec['candidate'])})"),
        ("Approval", e(approval_line(entry))),
        (
            "Training",
            f"{e(str(entry['training']['method']))}, MLflow run <code>{e(entry['training']['mlflow_run_id'])}</code>",
        ),
        ("Record", f"#{entry['seq']} sha256 {short(sha)}"),
        ("Previous entry", short(entry["previous_sha256"])),
    ]
    if entry.get("amends"):
        summary.append(("Amends", short(entry["amends"]) + " (this quarter was rerun after an earlier audit)"))
    parts = [
        f"<h1>Audit record: {e(entry['flywheel'])}, cycle {e(entry['cycle'])}</h1>",
        f'<p class="muted">Quarter starting {e(entry["cycle"])} (cycle {entry["cycle_index"]}). '
        "Check every hash below with <code>flywheel audit verify</code>.</p>",
        '<div class="summary">' + "".join(f"<div>{k}</div><div>{v}</div>" for k, v in summary) + "</div>",
        "<h2>Benchmark (held-out pass@1, 95% bootstrap CIs)</h2>",
    ]

    def ci(v: float, c: list[float], signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        return f"{f.format(v)} <span class='muted'>[{f.format(c[0])}, {f.format(c[1])}]</span>"

    parts.append(
        table(
            ["suite", "champion", "candidate", "delta"],
            [
                [
                    f"<b>{e(s['suite'])}</b>" if s["suite"] == "overall" else e(s["suite"]),
                    ci(s["champion"], s["champion_ci"]),
                    ci(s["candidate"], s["candidate_ci"]),
                    ci(s["delta"], s["delta_ci"], signed=True),
                ]
                for s in entry["benchmark"]["suites"]
            ],
            {1, 2, 3},
        )
    )
    parts.append(
        f"<p class='muted'>{entry['benchmark']['problems_per_suite']} problems per suite, "
        f"{entry['benchmark']['samples_per_problem']} samples each. Gate: {e(entry['gate']['reason'])}</p>"
    )
    parts.append("<h2>Checks (PII, decontamination, loop health, gate, approval)</h2>")
    rows = []
    for name, c in entry["checks"].items():
        if "passed" not in c:
            result = badge(c.get("status", "not run"), "na")
        elif c["passed"]:
            result = badge("passed", "ok")
        else:
            result = badge("failed: " + c["severity"].lower(), "bad" if c["severity"] == "ERROR" else "warn")
        rows.append([f"<code>{e(name)}</code>", e(c["asset"]), result, e(c.get("description") or "")])
    parts.append(table(["check", "on asset", "result", "detail"], rows))
    parts.append("<h2>Models</h2>")
    parts.append(
        table(
            ["role", "version", "weights sha256", "files sha256", "MLflow run"],
            [
                [
                    role,
                    f"v{e(m['version'])}" + (" (LoRA adapter)" if m["adapter"] else ""),
                    short(m["weights_sha256"]),
                    short(m["files_sha256"]),
                    f"<code>{e(m['run_id'] or '')}</code>",
                ]
                for role, m in entry["models"].items()
            ],
        )
    )
    t = entry["training"]
    parts.append("<h2>Training</h2>")
    facts = [
        ["method", e(str(t["method"]))],
        ["job id", f"<code>{e(str(t['job_id']))}</code>"],
        ["training set sha256", short(t["training_dataset_sha256"])],
        [
            "steps / train loss",
            f"{t['steps']} / {t['train_loss']:.4f}" if t["train_loss"] is not None else str(t["steps"]),
        ],
        ["tokens trained / generated", f"{t['tokens_trained']:,} / {t['tokens_generated']:,}"],
        *[[f"<code>{e(k)}</code>", f"<code>{e(v)}</code>"] for k, v in t["config"].items()],
    ]
    parts.append(table(["setting", "value"], facts))
    parts.append("<h2>Data files</h2>")
    parts.append(
        table(
            ["table", "partition", "file", "rows", "bytes", "sha256"],
            [
                [
                    e(f["table"]),
                    e(f.get("partition", entry["cycle"])),
                    e(f["file"]),
                    "" if f["rows"] is None else f"{f['rows']:,}",
                    f"{f['bytes']:,}",
                    short(f["sha256"]),
                ]
                for f in entry["files"]
            ],
            {3, 4},
        )
    )
    parts.append("<h2>Counts (rows kept, dropped and quarantined, per reason)</h2>")
    rows = [
        [e(asset), f"<code>{e(k)}</code>", f"{v:,}"]
        for asset, m in entry["assets"].items()
        for k, v in m["counts"].items()
    ]
    parts.append(table(["asset", "count", "value"], rows, {2}))
    parts.append("<h2>Asset materializations</h2>")
    parts.append(
        table(
            ["asset", "Dagster run", "code version", "data version", "materialized at (UTC)"],
            [
                [
                    e(a),
                    f"<code>{e(m['run_id'])}</code>",
                    e(str(m["code_version"])),
                    f"<code>{e(str(m['data_version']))}</code>",
                    e(m["materialized_at"].replace("+00:00", "")),
                ]
                for a, m in entry["assets"].items()
            ],
        )
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Audit {e(entry['cycle'])}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
