"""A model's lineage (`flywheel audit lineage`) from the chain: each step back from a version to the bootstrap
base, with the cycle, method and training data of each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywheel_dagster.audit.chain import Chain
from flywheel_dagster.audit.verification import expected_state
from flywheel_dagster.records import HARVESTED_TRACES, REASONING_TRACES, TRAINING_DATASET

if TYPE_CHECKING:
    from flywheel_dagster.traces.lake import Lake


def lineage(lake: Lake, version: str) -> list[dict]:
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
        data = [f for f in rec["files"] if f["table"] in (REASONING_TRACES, HARVESTED_TRACES, TRAINING_DATASET)]
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
