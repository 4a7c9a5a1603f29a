"""Switching the serving champion: after a promotion (champion_model) and by hand (`flywheel rollback`).

Both go through `switch_serving`: when a gateway runs for this flywheel, the target version is staged next
to the serving one, health-checked with verified prompts, and only then given the traffic; a target that
fails is torn down and the serving version stays. A rollback is recorded like a promotion: registry tags on
both versions, an entry in the audit chain (kind `rollback`), and the next cycle deploys the version
rolled back to (see `rollback_after`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flywheel_dagster import audit
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.records import Decision
from flywheel_dagster.registry import BASE, CHAMPION, Registry
from flywheel_dagster.serving.client import health_prompts, redeploy, running_gateway
from flywheel_dagster.tasks import load_task
from flywheel_dagster.traces.lake import Lake


class RollbackError(ValueError):
    """A rollback refused (bad version, nothing to do) or, with switch_failed, one whose switch-over failed."""

    def __init__(self, message: str, switch_failed: bool = False) -> None:
        super().__init__(message)
        self.switch_failed = switch_failed


@dataclass
class Switch:
    """What happened to the running server: switched, failed (with why), or nothing ran."""

    state: str  # "switched" | "failed" | "no_server" | "disabled"
    reason: str
    result: dict | None = None

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def summary(self) -> dict:
        out = {"state": self.state, "reason": self.reason}
        if self.result:
            out |= {k: self.result.get(k) for k in ("method", "previous", "seconds", "serving") if k in self.result}
            if self.result.get("health"):
                h = self.result["health"]
                out["health"] = {"correct": h["correct"], "total": h["total"], "needed": h["needed"]}
        return out


def switch_serving(cfg: FlywheelConfig, state_file: Path, lake: Lake, registry: Registry, version: str) -> Switch:
    """Move a running gateway to `version` (health-checked before it takes traffic)."""
    if not cfg.serving.redeploy:
        return Switch("disabled", "serving.redeploy is off")
    gateway, why = running_gateway(state_file)
    if gateway is None:
        return Switch("no_server", why)
    if gateway.version == version:
        return Switch("switched", f"the gateway already serves v{version}")
    task = load_task(cfg)
    prompts, needed, source = health_prompts(cfg, task, lake, registry, registry.version(version))
    result = redeploy(gateway, version, prompts, needed)
    result["health_prompts"] = source
    if not result.get("ok"):
        return Switch("failed", result.get("reason", "unknown"), result)
    return Switch("switched", result["reason"], result)


def served_before(registry: Registry, version: str) -> bool:
    base = registry.alias(BASE)
    if base is not None and base.version == version:
        return True
    tags = registry.version_tags(version)
    return tags.get("flywheel.decision") == "promoted" or "flywheel.rolled_back_to_at" in tags


def latest_finished_cycle(lake: Lake) -> str | None:
    done = Decision.cycles(lake)
    return max(done) if done else None


def rollback(
    cfg: FlywheelConfig, state_file: Path, lake: Lake, registry: Registry, version: str, by: str, note: str
) -> tuple[dict, Switch]:
    """Make `version` the champion again: switch the running server (if any) first, then move the alias and
    record it. Raises RollbackError when the version cannot be rolled back to or the switch failed."""
    if not by.strip():
        raise RollbackError("--by must name the person rolling back")
    try:
        registry.version(version)
    except Exception as err:  # noqa: BLE001 - MLflow raises its own types for an unknown version
        raise RollbackError(f"model version {version!r} of {registry.model_name} does not exist ({err})") from None
    current = registry.alias(CHAMPION)
    if current is not None and current.version == version:
        raise RollbackError(f"v{version} is already the champion")
    if not served_before(registry, version):
        raise RollbackError(
            f"v{version} never served: it is not the base and was never promoted; a rollback returns to a version "
            "that served before"
        )
    switch = switch_serving(cfg, state_file, lake, registry, version)
    if switch.failed:
        raise RollbackError(
            f"rollback to v{version} failed, v{current.version if current else '?'} keeps serving: {switch.reason}",
            switch_failed=True,
        )

    at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    registry.set_alias(CHAMPION, version)
    registry.set_version_tags(version, {"flywheel.rolled_back_to_at": at, "flywheel.rolled_back_by": by.strip()})
    if current is not None:
        registry.set_version_tags(current.version, {"flywheel.rolled_back_from_at": at})
    audit.ensure_genesis(lake, registry)
    entry = {
        "kind": "rollback",
        "at": at,
        "by": by.strip(),
        "note": note,
        "from_version": current.version if current else None,
        "to_version": version,
        "after_cycle": latest_finished_cycle(lake),
        "serving": switch.summary(),
    }
    stored, sha = audit.append_and_anchor(audit.Chain(lake), registry, entry)
    return {**stored, "sha256": sha}, switch


def rollback_after(lake: Lake, cycle: str) -> dict | None:
    """The newest rollback made after `cycle` finished (and before the next cycle ran), if any."""
    found = None
    for e in audit.Chain(lake).entries():
        if e.get("kind") == "rollback" and e.get("after_cycle") == cycle:
            found = e
    return found
