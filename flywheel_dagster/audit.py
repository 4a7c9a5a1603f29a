"""The audit chain: an append-only, hash-linked log of every cycle's record and every erasure request.

Entries live in the lake under `audit_chain/`, one file per entry (`000001.json`, ...), each the canonical
JSON of the entry (sorted keys, no spaces), so an entry's sha256 is the sha256 of its file. Each entry
holds the sha256 of the entry before it; the first is the genesis entry, the bootstrap base model. The
sha256 of the newest entry is also kept outside the lake, as a tag on the MLflow experiment, so rewriting
the whole chain consistently is still caught.

Kinds:
- `genesis`: the base model (version, weights and files hashes).
- `cycle`: one quarter's record (written by the `cycle_audit` asset). A rerun of an audited quarter that
  changed something appends an amendment (`amends` = the sha256 of the record it replaces); nothing is
  ever rewritten. Re-auditing an unchanged quarter appends nothing.
- `erasure`: a `flywheel forget` request: which files were rewritten (hash before and after), how many
  rows each lost, and which model versions were trained on data that held the user's traces.

`verify` re-hashes every file and model that the newest entries refer to and walks the links.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel_dagster.hashing import legacy_tree_sha256, tree_sha256

if TYPE_CHECKING:
    from flywheel_dagster.registry import Registry

# Format 2 hashes folder trees unambiguously and records the raw inputs; format 1 entries still verify.
SCHEMA = "flywheel.audit/2"
SCHEMA_1 = "flywheel.audit/1"
CHAIN_TABLE = "audit_chain"
AUDIT_TABLE = "cycle_audit"
RECORD_FILE = "audit.json"
REPORT_FILE = "audit.html"
APPROVAL_TABLE = "approvals"
APPROVAL_FILE = "approval.json"
HEAD_TAG = "flywheel.audit_head_sha256"
RECORD_TAG = "flywheel.audit_record_sha256"

# The lake tables that hold one partition per cycle, in stage order: every file in them is audited.
CYCLE_TABLES = (
    "deployment",
    "reasoning_traces",
    "ingest_quarantine",
    "harvested_traces",
    "training_dataset",
    "candidate_model",
    "benchmark_report",
    "approvals",
    "champion_model",
)
EVALUATIONS_TABLE = "evaluations"
# The raw inputs a cycle ingested (log files outside the lake's cycle tables), kept in its reasoning_traces
# partition and copied into its record, so `verify` re-hashes them and notices files added since.
SOURCES_FILE = "sources.json"
# Entry fields that place an entry in the chain (and the format's name), as opposed to what it says.
_PLACEMENT = ("schema", "seq", "previous_sha256", "amends")


def canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content(entry: dict) -> dict:
    """What an entry says, without where it sits in the chain (to tell an unchanged re-audit)."""
    return {k: v for k, v in entry.items() if k not in _PLACEMENT}


def subject_sha256(user_id: str, key: bytes) -> str:
    """How an erasure request names its user: HMAC-SHA256 under the deployment's secret key (erasure_key), so
    the chain keeps no personal data and a user id cannot be recovered by hashing candidate ids."""
    import hmac

    return hmac.new(key, f"flywheel-erasure:{user_id}".encode(), hashlib.sha256).hexdigest()


ERASURE_KEY_ENV = "FLYWHEEL_ERASURE_KEY"


def erasure_key(home: str | Path) -> bytes:
    """The deployment's secret for erasure subjects: $FLYWHEEL_ERASURE_KEY (hex, from a secret store), else
    `<home>/secrets/erasure.key`, made on first use (mode 0600). Not in the lake, beside the chain it keys."""
    import os
    import secrets

    if os.environ.get(ERASURE_KEY_ENV):
        try:
            return bytes.fromhex(os.environ[ERASURE_KEY_ENV])
        except ValueError:
            raise ValueError(f"${ERASURE_KEY_ENV}: expected the key as hex digits") from None
    path = Path(home) / "secrets" / "erasure.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def files_sha256(folder: str | Path, schema: str = SCHEMA) -> str:
    """Hash of a model's folder tree as the audit format `schema` computes it (format 2: unambiguous)."""
    return legacy_tree_sha256(folder) if schema == SCHEMA_1 else tree_sha256(folder)


@dataclass(frozen=True)
class Mismatch:
    what: str  # "chain", "file", "model", "record", "anchor"
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what} {self.where}: {self.detail}"


class Chain:
    """The chain's entries in a lake (single writer: cycles run one after another, `forget` by hand)."""

    def __init__(self, lake) -> None:  # noqa: ANN001 - traces.lake.Lake
        self.lake = lake

    def _names(self) -> list[str]:
        return sorted(self.lake.files(CHAIN_TABLE))

    def raw(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) of every entry, oldest first."""
        return [(n, self.lake.read_object(CHAIN_TABLE, n)) for n in self._names()]

    def entries(self) -> list[dict]:
        return [json.loads(b) for _, b in self.raw()]

    def head_sha256(self) -> str | None:
        names = self._names()
        return sha256_bytes(self.lake.read_object(CHAIN_TABLE, names[-1])) if names else None

    def append(self, entry: dict) -> tuple[dict, str]:
        """Add an entry after the newest; returns the entry as stored and its sha256."""
        names = self._names()
        prev = sha256_bytes(self.lake.read_object(CHAIN_TABLE, names[-1])) if names else None
        seq = len(names) + 1
        stored = {"schema": SCHEMA, **entry, "seq": seq, "previous_sha256": prev}
        data = canonical(stored)
        self.lake.write_object(CHAIN_TABLE, f"{seq:06d}.json", data)
        return stored, sha256_bytes(data)

    def latest_cycle_records(self) -> dict[str, tuple[dict, str]]:
        """Each audited cycle's newest record and its sha256."""
        out = {}
        for _, data in self.raw():
            e = json.loads(data)
            if e.get("kind") == "cycle":
                out[e["cycle"]] = (e, sha256_bytes(data))
        return out


def genesis_entry(model_name: str, version: str, weights_sha256: str, files_sha: str, run_id: str | None) -> dict:
    return {
        "kind": "genesis",
        "model": {
            "name": model_name,
            "version": version,
            "weights_sha256": weights_sha256,
            "files_sha256": files_sha,
            "run_id": run_id,
        },
    }


def ensure_genesis(lake, registry) -> None:  # noqa: ANN001 - Lake, Registry
    """Start the chain at the bootstrap base model (alias `base`) if it is empty."""
    from flywheel_dagster.registry import BASE, weights_sha256

    chain = Chain(lake)
    if chain.head_sha256() is not None:
        return
    base = registry.alias(BASE)
    if base is None:
        raise RuntimeError("no base model registered (alias 'base'): bootstrap the flywheel before auditing it")
    entry = genesis_entry(
        registry.model_name,
        base.version,
        weights_sha256(registry.local_path(base)),
        registry.files_sha256(base),
        base.run_id,
    )
    append_and_anchor(chain, registry, entry)


def append_and_anchor(chain: Chain, registry: Registry, entry: dict) -> tuple[dict, str]:
    """Append an entry to the chain and anchor the new head in MLflow (the experiment tag `verify` checks the
    head against): the one way anything is written to the audit chain, so no writer forgets the anchor."""
    stored, sha = chain.append(entry)
    registry.set_experiment_tag(HEAD_TAG, sha)
    return stored, sha


def lake_files(lake, cycle: str, evaluations: list[str] = ()) -> list[dict]:  # noqa: ANN001
    """Every file of every cycle table's partition for `cycle`, plus the benchmark results `evaluations` (their
    partitions are per model version, not per cycle): table, file, sha256, bytes, rows."""
    import pyarrow.parquet as pq

    out = []
    for table, partition in [(t, cycle) for t in CYCLE_TABLES] + [(EVALUATIONS_TABLE, p) for p in evaluations]:
        for name in sorted(lake.files(table, partition)):
            digest, size = lake.file_sha256(table, partition, name)
            rows = None
            if name.endswith(".parquet"):
                with lake.fs.open_input_file(f"{lake.partition_dir(table, partition)}/{name}") as f:
                    rows = pq.ParquetFile(f).metadata.num_rows
            entry = {"table": table, "file": name, "sha256": digest, "bytes": size, "rows": rows}
            out.append(entry if partition == cycle else {**entry, "partition": partition})
    return out


def input_manifest(paths: list[str], window: tuple[str, str], files: list[str]) -> dict:
    """The raw inputs of an ingest: the configured paths, the window they were read for, each file's hash."""
    from flywheel_dagster.hashing import file_sha256

    listed = []
    for f in files:
        digest, size = file_sha256(f)
        listed.append({"path": str(Path(f).resolve()), "sha256": digest, "bytes": size})
    return {"paths": list(paths), "window": list(window), "files": listed}


def expected_inputs(entries: list[dict]) -> dict[str, dict]:
    """What the chain says each recorded raw input file holds now: path -> {sha256, cycle, search}, after every
    erasure that rewrote one (`search`: the cycle's ingest paths and window, to look for files added since)."""
    out: dict[str, dict] = {}
    searched: dict[str, dict] = {}
    for e in entries:
        if e.get("kind") == "cycle":
            for path, f in list(out.items()):
                if f["cycle"] == e["cycle"]:
                    del out[path]
            inputs = e.get("inputs")
            if inputs:
                searched[e["cycle"]] = inputs
                for f in inputs["files"]:
                    out[f["path"]] = {"sha256": f["sha256"], "cycle": e["cycle"]}
        elif e.get("kind") == "erasure":
            for f in e.get("inputs_rewritten", []):
                if f["path"] in out:
                    out[f["path"]]["sha256"] = f["sha256_after"]
    for f in out.values():
        f["search"] = searched[f["cycle"]]
    return out


def _verify_inputs(entries: list[dict]) -> list[Mismatch]:
    from datetime import datetime

    from flywheel_dagster.curation.ingest import Window, find_log_files
    from flywheel_dagster.hashing import file_sha256

    problems = []
    expected = expected_inputs(entries)
    for path, f in sorted(expected.items()):
        if not Path(path).is_file():
            problems.append(Mismatch("input", path, f"missing (ingested by cycle {f['cycle']})"))
            continue
        got = file_sha256(path)[0]
        if got != f["sha256"]:
            problems.append(Mismatch("input", path, f"sha256 {got[:12]}, recorded {f['sha256'][:12]}"))
    searches = {f["cycle"]: f["search"] for f in expected.values()}
    for cycle, search in sorted(searches.items()):
        window = Window(*(datetime.fromisoformat(t) for t in search["window"]))
        try:
            now = find_log_files(search["paths"], window)
        except FileNotFoundError as err:
            problems.append(
                Mismatch("input", ", ".join(search["paths"]), f"cycle {cycle}'s ingest path is gone ({err})")
            )
            continue
        for extra in sorted({str(Path(p).resolve()) for p in now} - set(expected)):
            problems.append(Mismatch("input", extra, f"added to cycle {cycle}'s ingest paths after it was audited"))
    return problems


def expected_state(entries: list[dict]) -> tuple[dict[tuple[str, str, str], str], dict[str, dict]]:
    """What the chain says the lake holds now: (table, partition, file) -> sha256, after every amendment and
    erasure in order; and each cycle's newest record."""
    per_cycle: dict[str, dict[tuple[str, str, str], str]] = {}
    records: dict[str, dict] = {}
    for e in entries:
        if e.get("kind") == "cycle":
            q = e["cycle"]
            per_cycle[q] = {(f["table"], f.get("partition", q), f["file"]): f["sha256"] for f in e["files"]}
            records[q] = e
        elif e.get("kind") == "erasure":
            for f in e["rewritten"]:
                k = (f["table"], f["cycle"], f["file"])
                for files in per_cycle.values():
                    if k in files:
                        files[k] = f["sha256_after"]
    merged: dict[tuple[str, str, str], str] = {}
    for files in per_cycle.values():
        merged |= files
    return merged, records


def verify_chain(raw: list[tuple[str, bytes]]) -> tuple[list[dict], list[Mismatch], str | None]:
    """Walk the stored entries: each must parse, be numbered in order and link to the hash of the one before.
    Returns the entries, the mismatches and the head's sha256."""
    problems: list[Mismatch] = []
    entries, prev = [], None
    for i, (name, data) in enumerate(raw, 1):
        try:
            e = json.loads(data)
        except ValueError as err:
            problems.append(Mismatch("chain", name, f"not valid JSON ({err})"))
            prev = sha256_bytes(data)
            continue
        if e.get("seq") != i:
            problems.append(Mismatch("chain", name, f"sequence number {e.get('seq')}, expected {i}"))
        if e.get("previous_sha256") != prev:
            problems.append(
                Mismatch(
                    "chain",
                    name,
                    f"links to {str(e.get('previous_sha256'))[:12]}, but the entry before it hashes to "
                    f"{str(prev)[:12]} (an earlier entry was changed or removed)",
                )
            )
        prev = sha256_bytes(data)
        entries.append(e)
    return entries, problems, prev


def verify(lake, registry) -> list[Mismatch]:  # noqa: ANN001 - Lake, Registry
    """Re-hash the chain, every file and model the newest entries refer to, and each cycle's record copy."""
    raw = Chain(lake).raw()
    if not raw:
        return [Mismatch("chain", CHAIN_TABLE, "no audit entries (no cycle has been audited)")]
    entries, problems, prev = verify_chain(raw)
    anchor = registry.experiment_tag(HEAD_TAG)
    if anchor != prev:
        problems.append(
            Mismatch("anchor", f"MLflow experiment tag {HEAD_TAG}", f"is {str(anchor)[:12]}, chain head is {prev[:12]}")
        )

    files, records = expected_state(entries)
    for (table, cycle, name), want in sorted(files.items()):
        where = f"{table}/cycle={cycle}/{name}"
        if not lake.exists(table, cycle, name):
            problems.append(Mismatch("file", where, "missing"))
            continue
        got = lake.file_sha256(table, cycle, name)[0]
        if got != want:
            problems.append(Mismatch("file", where, f"sha256 {got[:12]}, recorded {want[:12]}"))
    for cycle in sorted(records):
        for table in CYCLE_TABLES:
            for name in sorted(lake.files(table, cycle)):
                if (table, cycle, name) not in files:
                    problems.append(
                        Mismatch(
                            "file", f"{table}/cycle={cycle}/{name}", "not in the cycle's audit record (added since)"
                        )
                    )
    problems += _verify_inputs(entries)
    for cycle, rec in sorted(records.items()):
        where = f"{AUDIT_TABLE}/cycle={cycle}/{RECORD_FILE}"
        if not lake.exists(AUDIT_TABLE, cycle, RECORD_FILE):
            problems.append(Mismatch("record", where, "missing (the chain holds the record)"))
        elif lake.read_bytes(AUDIT_TABLE, cycle, RECORD_FILE) != canonical(rec):
            problems.append(Mismatch("record", where, "differs from the cycle's newest record in the chain"))

    models: dict[str, tuple[str, str]] = {}  # version -> (files sha256, the format that computed it)
    for e in entries:
        if e.get("kind") == "genesis":
            models[e["model"]["version"]] = (e["model"]["files_sha256"], e.get("schema", SCHEMA_1))
    for rec in records.values():
        for role in ("deployed", "candidate"):
            m = rec["models"].get(role)
            if m:
                models[m["version"]] = (m["files_sha256"], rec.get("schema", SCHEMA_1))
    for version, (want, schema) in sorted(models.items(), key=lambda kv: int(kv[0])):
        where = f"{registry.model_name} v{version}"
        try:
            got = files_sha256(registry.files_path(registry.version(version)), schema)
        except Exception as err:  # noqa: BLE001 - a deleted version or artifact is a finding, not a crash
            problems.append(Mismatch("model", where, f"cannot read its files ({err})"))
            continue
        if got != want:
            problems.append(Mismatch("model", where, f"files sha256 {got[:12]}, recorded {want[:12]}"))
    return problems


def lineage(lake, version: str) -> list[dict]:  # noqa: ANN001
    """From model `version` back to the base: each step's cycle, method, parent and training data hashes."""
    entries = Chain(lake).entries()
    _, records = expected_state(entries)
    by_candidate = {r["models"]["candidate"]["version"]: r for r in records.values() if r["models"].get("candidate")}
    genesis = next((e for e in entries if e.get("kind") == "genesis"), None)
    erasures = [e for e in entries if e.get("kind") == "erasure"]
    steps, cur, seen = [], str(version), set()
    while cur not in seen:
        seen.add(cur)
        if genesis and genesis["model"]["version"] == cur:
            steps.append({"version": cur, "origin": "bootstrap base (genesis)", **genesis["model"]})
            break
        rec = by_candidate.get(cur)
        if rec is None:
            steps.append({"version": cur, "origin": "not in any audit record"})
            break
        data = [f for f in rec["files"] if f["table"] in ("reasoning_traces", "harvested_traces", "training_dataset")]
        steps.append(
            {
                "version": cur,
                "origin": f"trained in cycle {rec['cycle']}",
                "cycle": rec["cycle"],
                "method": rec["training"].get("method"),
                "parent_version": rec["models"]["deployed"]["version"],
                "decision": rec["decision"].get("decision"),
                "data": data,
                "erasures": [
                    {"seq": e["seq"], "requested_at": e["requested_at"], "files": len(e["rewritten"])}
                    for e in erasures
                    if any(f["cycle"] == rec["cycle"] for f in e["rewritten"])
                ],
            }
        )
        cur = rec["models"]["deployed"]["version"]
    return steps


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
