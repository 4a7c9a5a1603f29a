"""Switching a running gateway to another model version: what champion_model and `flywheel rollback` call."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import httpx

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.registry import ModelRef, Registry
from flywheel_dagster.tasks.base import TaskSource
from flywheel_dagster.traces.lake import Lake


@dataclass(frozen=True)
class RunningGateway:
    url: str
    token: str
    version: str | None

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


def running_gateway(path: Path) -> tuple[RunningGateway | None, str]:
    """The gateway whose state file (written by `flywheel serve`) is `path`, or None with why not."""
    if not path.exists():
        return None, f"no gateway is running for this flywheel (no {path})"
    try:
        state = json.loads(path.read_text())
        r = httpx.get(
            f"{state['url']}/flywheel/status", headers={"authorization": f"Bearer {state['token']}"}, timeout=5
        )
    except (OSError, ValueError, KeyError, httpx.HTTPError) as err:
        return None, f"the gateway in {path} does not answer ({type(err).__name__}); treated as not running"
    if r.status_code != 200:
        return None, f"the gateway in {path} answered {r.status_code} to /flywheel/status"
    return RunningGateway(state["url"], state["token"], r.json().get("version")), "running"


def question_of(task: TaskSource, prompt: str) -> str:
    """The user's question inside a task prompt (the inverse of task.prompt_for)."""
    marker = "\x00QUESTION\x00"
    prefix, suffix = task.prompt_for(marker).split(marker)
    if prompt.startswith(prefix) and prompt.endswith(suffix):
        return prompt[len(prefix) : len(prompt) - len(suffix)].strip()
    return prompt.strip()


def _evaluation_keys(cfg: FlywheelConfig, task: TaskSource, ref: ModelRef, problems: list, made: set[str]) -> list[str]:
    """Where to find a version's evaluation on this benchmark, best first: the one the benchmark of now reads
    (this verifier, this engine on either device: no torch is imported to resolve it), any other engine's or
    verifier's (the last by name, so the same one every time), then one named as before engines and verifiers
    were in the name (until 2026-12-05)."""
    from flywheel_dagster.cycle import benchmark_settings, evaluation_benchmark_prefix, evaluation_key
    from flywheel_dagster.engines.base import engine_identity
    from flywheel_dagster.evaluation.benchmark import benchmark_fingerprint
    from flywheel_dagster.records import evaluation_prefix
    from flywheel_dagster.tasks.base import verifier_id

    settings, e = benchmark_settings(cfg), cfg.engine
    devices = ("cuda", "cpu")  # either: the benchmark's engine resource may set the device itself (production: cuda)
    now = [
        evaluation_key(
            ref, problems, settings, verifier_id(task), engine_identity(e.kind, d, e.replicas, e.shard_prompts)
        )
        for d in devices
    ]
    prefix = evaluation_benchmark_prefix(ref, problems, settings)
    others = sorted((key for key in made if key.startswith(prefix)), reverse=True)
    old = evaluation_prefix(ref.name, ref.version, ref.run_id) + benchmark_fingerprint(
        problems, settings, task.verifier_name
    )
    return [*now, *others, old]


def health_prompts(
    cfg: FlywheelConfig, task: TaskSource, lake: Lake, registry: Registry, ref: ModelRef
) -> tuple[list[dict], int, str]:
    """Verified prompts for a version's health check, the number it must answer right, and where they came from.

    The prompts are benchmark problems the version solved in every sample of its own evaluation, so a
    healthy server answers nearly all of them greedily; min_correct = ceil(min_accuracy * n). A version
    never evaluated gets benchmark problems and min_correct 0: only that every request is answered.
    """
    from flywheel_dagster.records import EVALUATIONS

    n = cfg.serving.health_check.prompts
    problems = task.benchmark(cfg.benchmark.problems_per_suite, cfg.benchmark.seed)
    by_id = {p.problem_id: p for p in problems}
    made = set(lake.cycles(EVALUATIONS))
    chosen_key = next((key for key in _evaluation_keys(cfg, task, ref, problems, made) if key in made), None)
    if chosen_key is not None:
        table = lake.read_table(EVALUATIONS, chosen_key).to_pylist()
        solved = [r["problem_id"] for r in table if r["pass_at_1"] >= 1.0]
        solved.sort(key=lambda pid: hashlib.sha256(pid.encode()).hexdigest())
        chosen = [by_id[pid] for pid in solved[:n]]
        source = f"{len(chosen)} benchmark problems v{ref.version} solved in all samples of its evaluation"
        needed = math.ceil(cfg.serving.health_check.min_accuracy * len(chosen))
    else:
        chosen = sorted(problems, key=lambda p: hashlib.sha256(p.problem_id.encode()).hexdigest())[:n]
        source = f"v{ref.version} has no evaluation: {len(chosen)} benchmark problems, answered at all"
        needed = 0
    prompts = [{"question": question_of(task, p.prompt), "reference": p.reference} for p in chosen]
    return prompts, needed, source


def redeploy(
    gateway: RunningGateway, version: str, prompts: list[dict], min_correct: int, timeout_s: float = 900.0
) -> dict:
    """Ask the gateway to stage, health-check and switch to `version`; its answer (ok, reason, health, ...)."""
    r = httpx.post(
        f"{gateway.url}/flywheel/deploy",
        json={"version": version, "health": {"prompts": prompts, "min_correct": min_correct}},
        headers=gateway.headers(),
        timeout=timeout_s,
    )
    if r.status_code not in (200, 409):
        return {"ok": False, "version": version, "reason": f"gateway answered {r.status_code}: {r.text[:300]}"}
    return r.json()
