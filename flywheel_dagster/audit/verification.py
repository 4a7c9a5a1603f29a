"""Verifying the chain: walk its links, replay it to what the lake, the raw inputs and the registry should
hold now (after every amendment and erasure), and re-hash all of it. Each difference is a Mismatch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel_dagster.audit.chain import (
    AUDIT_TABLE,
    CHAIN_TABLE,
    CYCLE_TABLES,
    HEAD_TAG,
    RECORD_FILE,
    SCHEMA_1,
    Chain,
    canonical,
    files_sha256,
    sha256_bytes,
)

if TYPE_CHECKING:
    from flywheel_dagster.registry import Registry
    from flywheel_dagster.traces.lake import Lake


@dataclass(frozen=True)
class Mismatch:
    what: str  # "chain", "file", "model", "record", "anchor"
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what} {self.where}: {self.detail}"


def expected_inputs(entries: list[dict]) -> dict[str, dict]:
    """What the chain says each recorded raw input file holds now: path -> {sha256, cycle, search}, after every
    erasure that rewrote one (`search`: the cycle's ingest paths and window, to look for files added since)."""
    out: dict[str, dict] = {}
    searched: dict[str, dict] = {}
    rewrites: dict[str, list[tuple[str, str]]] = {}  # path -> (sha256 before, after) of each erasure, in order
    for e in entries:
        if e.get("kind") == "cycle":
            for path, f in list(out.items()):
                if f["cycle"] == e["cycle"]:
                    del out[path]
            inputs = e.get("inputs")
            if inputs:
                searched[e["cycle"]] = inputs
                for f in inputs["files"]:
                    # A file the cycle ingested before an erasure rewrote it, audited after: the record names it as
                    # ingested, and the erasure's entry says what it became. (A file restored to its content from
                    # before an erasure is not ingested again: ingest.refuse_erased.)
                    sha = f["sha256"]
                    for before, after in rewrites.get(f["path"], []):
                        if sha == before:
                            sha = after
                    out[f["path"]] = {"sha256": sha, "cycle": e["cycle"]}
        elif e.get("kind") == "erasure":
            for f in e.get("inputs_rewritten", []):
                rewrites.setdefault(f["path"], []).append((f["sha256_before"], f["sha256_after"]))
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


def verify(lake: Lake, registry: Registry) -> list[Mismatch]:
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
