"""Problem sources and verifiers."""

from __future__ import annotations

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.tasks.base import Problem, TaskSource, Verdict

__all__ = ["Problem", "TaskSource", "Verdict", "load_task"]


def load_task(cfg: FlywheelConfig) -> TaskSource:
    """The task source named by config.task.source."""
    if cfg.task.source == "playground":
        from flywheel_dagster.tasks.playground import PlaygroundTask

        return PlaygroundTask(
            seed=cfg.task.seed, benchmark_seed=cfg.benchmark.seed, benchmark_size=cfg.benchmark.problems_per_suite
        )
    if cfg.task.source == "arithmetic":
        from flywheel_dagster.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(
            seed=cfg.task.seed, benchmark_seed=cfg.benchmark.seed, benchmark_size=cfg.benchmark.problems_per_suite
        )
    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    return GSM8KTask(cfg.task.data_dir, seed=cfg.task.seed, prompt_format=cfg.task.prompt_format)
