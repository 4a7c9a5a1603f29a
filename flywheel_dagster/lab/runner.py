"""Running a lab: one base model, then every arm's cycles in its own flywheel home, resumable at any point.

The lab's folder holds:
- `lab.json`: the base config, the quarters, the arms' overlays (a resumed lab refuses changed arms);
- `base/`: the home the base model was bootstrapped in once; every arm registers that same model as its v1;
- `arms/<arm>/`: the arm's flywheel home (its own lake, MLflow experiment `lab-<arm>` and Dagster instance),
  `cycles.jsonl` (one line per finished cycle, appended as it finishes) and `log.txt`.

Each arm runs in a worker process (`python -m flywheel_dagster.lab.worker FOLDER ARM`) that runs the arm's
cycles one after another through the code location's `flywheel_cycle` job, building the definitions from
the arm's config for that cycle. A worker that dies leaves the cycles it finished in `cycles.jsonl`; the next
`flywheel lab` on the same folder runs only what is missing. Arms run `workers` at a time.

Monitors never block inside the lab (their block levels are switched off in every arm): the lab records their
figures and judges warn and block itself against the base config's levels, so an arm runs all its cycles and
the lab can say when a monitor would have fired.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any

from flywheel_dagster.config import ConfigError, build_config, merged
from flywheel_dagster.curation.monitors import MONITORS
from flywheel_dagster.lab.arms import Arm, ArmError, check_arm

LAB_FILE = "lab.json"
CYCLES_FILE = "cycles.jsonl"
BASE_MODEL_DIR = "model"
# The default lab's sizes on the playground: 8 arms x 8 cycles in about 40 minutes on two cores (docs/lab.md).
PLAYGROUND_LAB_SIZE: dict[str, Any] = {
    "traffic": {"problems_per_cycle": 1500},
    "benchmark": {"problems_per_suite": 200, "samples_per_problem": 2},
    "training": {"epochs": 2},
}
NO_BLOCKING: dict[str, Any] = {"harvest": {"monitors": {field: {"block": None} for field, _ in MONITORS.values()}}}


def first_quarter(quarters: int, today: date | None = None) -> str:
    """The start of the quarter `quarters` before the current one: then exactly `quarters` have ended."""
    today = today or date.today()
    index = today.year * 4 + (today.month - 1) // 3 - quarters
    return date(index // 4, (index % 4) * 3 + 1, 1).isoformat()


def quarter_keys(start: str, n: int) -> list[str]:
    y, m = int(start[:4]), int(start[5:7])
    index = y * 4 + (m - 1) // 3
    return [date((index + i) // 4, ((index + i) % 4) * 3 + 1, 1).isoformat() for i in range(n)]


@dataclass
class Lab:
    folder: Path
    base: dict[str, Any]  # the base config (a preset, overrides, the lab's sizes and quarters)
    arms: list[Arm]
    cycles: int

    @property
    def quarters(self) -> list[str]:
        return quarter_keys(self.base["schedule"]["start_date"], self.cycles)

    def arm_dir(self, arm: str) -> Path:
        return self.folder / "arms" / arm

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def arm_config(self, arm: Arm, cycle: int) -> dict[str, Any]:
        """What the arm's `cycle`-th cycle runs: the base, the arm's overlays, its own name, the lab's base
        model, and no blocking monitor."""
        return merged(
            arm.config(self.base, cycle),
            NO_BLOCKING,
            {
                "name": f"lab-{arm.name}",
                "model": {"kind": "hf", "hf_path": str(self.folder / "base" / BASE_MODEL_DIR)},
            },
        )

    def finished(self, arm: str) -> list[dict[str, Any]]:
        """The arm's finished cycles, in order (a torn last line from a crash is ignored)."""
        path = self.arm_dir(arm) / CYCLES_FILE
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        return rows


def prepare(folder: Path, base: dict[str, Any], arms: list[Arm], cycles: int) -> Lab:
    """The lab in `folder`: new, or the one there resumed (its quarters kept; its arms must not have changed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LAB_FILE
    recorded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    start = recorded.get("start_date") or first_quarter(cycles)
    if quarter_keys(start, cycles)[-1] >= first_quarter(0):
        raise ArmError(
            f"{folder}: the lab started at {start}; {cycles} cycles from there reach quarters that have not "
            "ended yet; run fewer cycles or start a new lab folder"
        )
    base = merged(base, {"schedule": {"start_date": start}})
    if recorded and not _same_config(recorded["base"], base):
        raise ArmError(f"{folder}: this lab ran with another base config; start a new lab folder (or remove {path})")
    for arm in arms:
        before = recorded.get("arms", {}).get(arm.name)
        if before is not None and before != json.loads(json.dumps(arm.spec())):
            raise ArmError(f"{folder}: arm {arm.name!r} changed since it ran; give it a new name or a new lab folder")
        check_arm(arm, base, cycles)
    lab = Lab(folder, base, arms, cycles)
    spec = {
        "start_date": start,
        "cycles": max(cycles, recorded.get("cycles", 0)),
        "base": base,
        "arms": {**recorded.get("arms", {}), **{a.name: a.spec() for a in arms}},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, indent=2, default=str))
    tmp.replace(path)
    return lab


def _same_config(recorded: dict[str, Any], base: dict[str, Any]) -> bool:
    """The same settings, read by today's code: a field added since the lab started takes its default on both
    sides, so a newer version of the flywheel resumes an older lab; a recorded field that no longer exists
    makes it another config."""
    try:
        before = build_config(recorded, source="the lab's recorded base").model_dump(mode="json")
    except ConfigError:
        return False
    return before == build_config(base, source="lab base").model_dump(mode="json")


def bootstrap_base(lab: Lab) -> Path:
    """Bootstrap the base model once in the lab's `base/` home and keep a copy every arm registers."""
    import shutil

    from flywheel_dagster.bootstrap import bootstrap
    from flywheel_dagster.resources import local_resources

    target = lab.folder / "base" / BASE_MODEL_DIR
    if (target / "config.json").exists():
        return target
    home = lab.folder / "base"
    cfg = build_config(merged(lab.base, {"name": "lab-base"}), source="lab base")
    registry = local_resources(home)["mlflow"].registry(cfg.name)
    result = bootstrap(cfg, registry, home / "models")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(registry.local_path(result.ref), tmp)
    tmp.replace(target)
    return target


def run_lab(lab: Lab, workers: int = 1, say: Callable[[str], None] = print) -> dict[str, str]:
    """Every arm's missing cycles, `workers` arms at a time: each arm's outcome ('done', or why it stopped)."""
    bootstrap_base(lab)
    todo = [a.name for a in lab.arms if len(lab.finished(a.name)) < lab.cycles]
    for arm in lab.arms:
        if arm.name not in todo:
            say(f"lab: {arm.name}: {lab.cycles} cycles already done")
    workers = max(1, min(workers, len(todo)))  # a resumed lab with one arm left gives it every core
    threads = max(1, (os.cpu_count() or 1) // workers)  # workers share the cores
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running: dict[str, tuple[subprocess.Popen, float, IO[str]]] = {}
    outcome: dict[str, str] = {a.name: "done" for a in lab.arms if a.name not in todo}
    while todo or running:
        while todo and len(running) < workers:
            name = todo.pop(0)
            lab.arm_dir(name).mkdir(parents=True, exist_ok=True)
            log = (lab.arm_dir(name) / "log.txt").open("a")
            say(f"lab: {name}: starting at cycle {len(lab.finished(name)) + 1} of {lab.cycles}")
            proc = subprocess.Popen(
                [sys.executable, "-m", "flywheel_dagster.lab.worker", str(lab.folder), name, str(lab.cycles)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            running[name] = (proc, time.perf_counter(), log)
        time.sleep(0.5)
        for name, (proc, started, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            log.close()
            done = len(lab.finished(name))
            if proc.returncode == 0 and done >= lab.cycles:
                outcome[name] = "done"
                say(f"lab: {name}: {done} cycles done ({time.perf_counter() - started:.0f}s)")
            else:
                tail = (lab.arm_dir(name) / "log.txt").read_text().strip().splitlines()[-1:] or ["no output"]
                outcome[name] = f"stopped after {done} cycles: {tail[0]}"
                say(f"lab: {name}: {outcome[name]} (log: {lab.arm_dir(name) / 'log.txt'})")
    return outcome
