"""The lab's arms: config overlays on one base config, each a variant of the same flywheel.

An arm is a name, a sentence saying what it tests, an overlay merged field by field onto the lab's base
config, and optionally more overlays that apply from a given cycle on (`sft_then_rl` switches method half
way). Users add their own in a YAML file:

    my_arm:
      description: "twice the traffic"
      overlay: {traffic: {problems_per_cycle: 3000}}
      from_cycle: {5: {training: {learning_rate: 0.0001}}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flywheel_dagster.config import ConfigError, build_config, merged

ALWAYS_PROMOTE: dict[str, Any] = {"gate": {"always_promote": True}}
# The on-policy setting that came closest to gaining on the playground (docs/distill.md, grpo-mixed-8-e3).
RL_AFTER_SFT: dict[str, Any] = {
    "training": {
        "method": "grpo",
        "epochs": 3,
        "learning_rate": 1e-4,
        "on_policy": {"samples_per_prompt": 8, "prompts": "mixed"},
    }
}


class ArmError(ValueError):
    """An arm that cannot run: a bad arms file, an unknown arm, an overlay the config refuses."""


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    overlay: dict[str, Any]
    from_cycle: dict[int, dict[str, Any]] = field(default_factory=dict)

    def config(self, base: dict[str, Any], cycle: int) -> dict[str, Any]:
        """The arm's config for its `cycle`-th cycle (1-based)."""
        later = [o for start, o in sorted(self.from_cycle.items()) if cycle >= start]
        return merged(base, self.overlay, *later)

    def spec(self) -> dict[str, Any]:
        """What lab.json records of the arm (a resumed lab checks its arms have not changed)."""
        return {
            "description": self.description,
            "overlay": self.overlay,
            "from_cycle": {str(k): v for k, v in sorted(self.from_cycle.items())},
        }


def built_in_arms(cycles: int) -> dict[str, Arm]:
    """The six arms of the question (is it converging or collapsing?), `full` once more behind the gate, and
    the loop with every safeguard off (`self_consuming`: the one that collapses on the playground)."""
    switch = cycles // 2 + 1
    arms = [
        Arm("full", "verification, dedup, decontamination, anchors; every candidate promoted", ALWAYS_PROMOTE),
        Arm("full_gated", "the same behind the gate: what the gate protects", {}),
        Arm(
            "no_verification",
            "trains on every harvested trace, correct or not",
            merged(ALWAYS_PROMOTE, {"harvest": {"verify": False}}),
        ),
        Arm(
            "no_anchors",
            "pure self-training: no human anchors (synthetic fraction 1.0)",
            merged(ALWAYS_PROMOTE, {"harvest": {"anchor_fraction": 0.0}}),
        ),
        Arm(
            "no_dedup",
            "exact and near deduplication off",
            merged(ALWAYS_PROMOTE, {"harvest": {"dedup": {"exact": False, "near_duplicates": False}}}),
        ),
        Arm(
            "anchors_only",
            "the control: human anchors only, as many examples as the mix (is the gain just more training?)",
            merged(ALWAYS_PROMOTE, {"harvest": {"synthetic": False}}),
        ),
        Arm(
            "sft_then_rl",
            f"sft, then grpo (mixed prompts, 8 samples, 3 epochs at 1e-4) from cycle {switch}",
            ALWAYS_PROMOTE,
            {switch: RL_AFTER_SFT},
        ),
        Arm(
            "self_consuming",
            "the loop feeding on itself alone - no verification, no anchors, no dedup, every candidate promoted",
            merged(
                ALWAYS_PROMOTE,
                {
                    "harvest": {
                        "verify": False,
                        "anchor_fraction": 0.0,
                        "dedup": {"exact": False, "near_duplicates": False},
                    }
                },
            ),
        ),
    ]
    return {a.name: a for a in arms}


DEFAULT_ARMS = (
    "full",
    "full_gated",
    "no_verification",
    "no_anchors",
    "no_dedup",
    "anchors_only",
    "sft_then_rl",
    "self_consuming",
)


def load_arms_file(path: Path) -> dict[str, Arm]:
    """Arms from a YAML file: name -> {description, overlay, from_cycle}."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ArmError(f"arms file {path}: {err}") from None
    if not isinstance(raw, dict) or not raw:
        raise ArmError(f"arms file {path}: expected a mapping of arm name -> {{description, overlay, from_cycle}}")
    arms = {}
    for name, body in raw.items():
        where = f"arms file {path}, arm {name!r}"
        if not isinstance(body, dict) or not set(body) <= {"description", "overlay", "from_cycle"}:
            raise ArmError(f"{where}: expected a mapping with 'overlay' and optionally 'description', 'from_cycle'")
        overlay = body.get("overlay") or {}
        later = body.get("from_cycle") or {}
        if not isinstance(overlay, dict) or not isinstance(later, dict):
            raise ArmError(f"{where}: 'overlay' and 'from_cycle' must be mappings")
        try:
            from_cycle = {int(k): v for k, v in later.items()}
        except ValueError:
            raise ArmError(f"{where}: from_cycle keys must be cycle numbers (1, 2, ...)") from None
        arms[str(name)] = Arm(str(name), str(body.get("description", "")), overlay, from_cycle)
    return arms


def select_arms(names: list[str] | None, cycles: int, arms_file: Path | None = None) -> list[Arm]:
    """The arms to run, in order: the named ones (default: every built-in, then the file's)."""
    available = built_in_arms(cycles)
    extra = load_arms_file(arms_file) if arms_file else {}
    clash = sorted(set(extra) & set(available))
    if clash:
        raise ArmError(f"arms file {arms_file}: {clash} shadow built-in arms; pick other names")
    available |= extra
    wanted = names or [*DEFAULT_ARMS, *extra]
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ArmError(f"unknown arms {unknown}; expected some of {sorted(available)}")
    if len(set(wanted)) != len(wanted):
        raise ArmError(f"an arm is named twice: {wanted}")
    return [available[n] for n in wanted]


def check_arm(arm: Arm, base: dict[str, Any], cycles: int) -> None:
    """Every cycle's config of the arm validates (before anything runs), or ArmError naming arm and field."""
    for cycle in sorted({1, *arm.from_cycle, cycles}):
        if cycle > cycles:
            continue
        try:
            build_config(arm.config(base, cycle), source=f"lab arm {arm.name}, cycle {cycle}")
        except ConfigError as err:
            raise ArmError(str(err)) from None
