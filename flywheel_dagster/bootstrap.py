"""Cycle 0: build the base model and register it as version 1 with aliases `base` and `champion`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from flywheel_dagster.base_models import build_playground_model, convert_smollm2
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.registry import BASE, CHAMPION, ModelRef, Registry, weights_sha256
from flywheel_dagster.tasks import load_task
from flywheel_dagster.training.settings import TrainSettings
from flywheel_dagster.training.sft import run_sft

BOOTSTRAP_ANCHOR_SEED = 0


@dataclass(frozen=True)
class BootstrapResult:
    ref: ModelRef
    created: bool
    weights_sha256: str
    train_seconds: float | None = None
    train_loss: float | None = None


def bootstrap(cfg: FlywheelConfig, registry: Registry, models_dir: Path) -> BootstrapResult:
    """Create the base model once; a second call returns the existing `base` version unchanged."""
    existing = registry.alias(BASE)
    if existing is not None:
        return BootstrapResult(existing, False, weights_sha256(registry.local_path(existing)))

    seconds = loss = None
    with (
        registry.stage("bootstrap", 0, "bootstrap", tags={"flywheel.cycle": "bootstrap"}) as run_id,
        tempfile.TemporaryDirectory(prefix="flywheel-bootstrap-") as tmp,
    ):
        if cfg.model.kind == "playground-tiny":
            from flywheel_dagster.tasks.playground import ALPHABET, EASY_SUITES

            init = build_playground_model(cfg.model, ALPHABET, Path(tmp) / "init", seed=cfg.training.seed)
            task = load_task(cfg)
            anchors = task.anchors(cfg.bootstrap.examples, seed=BOOTSTRAP_ANCHOR_SEED)
            rows = [{"prompt": p.prompt, "completion": p.solution} for p in anchors]
            # Reading a worked solution put in the prompt is something a pretrained model brings along; the
            # playground model learns it from these examples, so that the on-policy self-distillation
            # teacher (the model shown the solution) knows what to do with it.
            shown = anchors[: round(cfg.bootstrap.reference_shown_fraction * len(anchors))]
            rows += [
                {
                    "prompt": task.teacher_template.format(prompt=p.prompt, privileged_context=p.solution),
                    "completion": p.solution,
                }
                for p in shown
            ]
            registry.log_params(
                run_id,
                {
                    **cfg.model.model_dump(),
                    **{f"bootstrap.{k}": v for k, v in cfg.bootstrap.model_dump().items()},
                    "suites": ",".join(EASY_SUITES),
                },
            )
            result = run_sft(
                init,
                rows,
                Path(tmp) / "base",
                TrainSettings(
                    method="sft",
                    learning_rate=cfg.bootstrap.learning_rate,
                    epochs=cfg.bootstrap.epochs,
                    batch_size=cfg.bootstrap.batch_size,
                    max_length=cfg.model.max_length,
                    seed=cfg.training.seed,
                    device=cfg.engine.device,
                ),
                on_log=registry.curve_logger(run_id),
            )
            model_dir, seconds, loss = result.model_dir, result.seconds, result.train_loss
        elif cfg.model.kind == "smollm2-gguf":
            model_dir = convert_smollm2(models_dir / "SmolLM2-135M-Instruct")
        else:
            model_dir = Path(cfg.model.hf_path or "")
            if not (model_dir / "config.json").exists():
                raise FileNotFoundError(
                    f"model.hf_path {cfg.model.hf_path!r}: expected a local Hugging Face model folder (with config.json)"
                )
        sha = weights_sha256(model_dir)
        ref = registry.register_model_dir(
            run_id, model_dir, tags={"flywheel.cycle": "bootstrap", "weights_sha256": sha}
        )
        registry.set_alias(BASE, ref.version)
        registry.set_alias(CHAMPION, ref.version)
    return BootstrapResult(ref, True, sha, seconds, loss)
