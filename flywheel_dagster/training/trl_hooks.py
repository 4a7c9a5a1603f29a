"""The private TRL methods the method trainers override: all of them, here, and nowhere else.

Everything else the trainers use of TRL is public: `compute_loss`, `log`, `sample_rollouts`, reward
functions, the configs. A private method can be renamed or change its parameters in any TRL release, and an
override of a method TRL no longer calls is silently dead: the method would train with TRL's objective
instead of its own. So each trainer class checks its hooks when it is built (`require`), and
tests/test_training_losses.py checks them all against the installed TRL.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Hook:
    """A private method of a TRL class that a flywheel trainer overrides, and why no public one will do."""

    module: str
    owner: str
    method: str
    params: tuple[str, ...]  # the parameters the override expects, `self` included
    why: str


HOOKS: tuple[Hook, ...] = (
    Hook(
        "trl",
        "DPOTrainer",
        "_precompute_ref_logps",
        ("self", "dataset", "name", "batch_size"),
        "redi: the REDI loss is reference-free. DPOTrainer loads no reference model only when told to "
        "precompute reference log-probs (or for a PEFT model); the override makes that precomputation a "
        "no-op. The public alternative, `compute_ref_log_probs`, still runs a pass over the dataset.",
    ),
    Hook(
        "trl.experimental.sdft",
        "SDFTTrainer",
        "_compute_self_distillation_loss",
        ("self", "model", "inputs", "distillation_logits"),
        "opsd: the capped forward KL replaces SDFT's divergence. The public `compute_loss` would have to "
        "compute the teacher and student logits itself, through the private `_compute_teacher_student_logits`.",
    ),
)


def problems(hooks: tuple[Hook, ...] = HOOKS) -> list[str]:
    """What is wrong with `hooks` in the installed TRL: a missing class or method, or other parameters."""
    import trl

    found = []
    for hook in hooks:
        where = f"TRL {trl.__version__}: {hook.module}.{hook.owner}.{hook.method}"
        owner = getattr(importlib.import_module(hook.module), hook.owner, None)
        method = getattr(owner, hook.method, None) if owner is not None else None
        if method is None:
            found.append(f"{where} is gone; flywheel overrides it for {hook.why}")
            continue
        params = tuple(inspect.signature(method).parameters)
        if params != hook.params:
            found.append(
                f"{where} takes {params}, flywheel's override expects {hook.params}; it is there for {hook.why}"
            )
    return found


def require(owner: type) -> None:
    """Raise unless every hook of the TRL class `owner` is there with its expected parameters."""
    wrong = problems(tuple(h for h in HOOKS if h.owner == owner.__name__))
    if wrong:
        raise RuntimeError("; ".join(wrong))


def overrides(trainer_class: type) -> set[str]:
    """The private (single-underscore) methods `trainer_class` defines itself: each must be a hook in HOOKS."""
    return {
        name
        for name, value in vars(trainer_class).items()
        if name.startswith("_") and not name.startswith("__") and inspect.isfunction(value)
    }
