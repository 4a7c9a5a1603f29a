"""Method comparison: one cycle with each distillation method from the same champion and the same traces.

    .venv/bin/python benchmarks/methods.py [--methods sft,redi,opsd,grpo] [--config flywheel.yaml] [--home DIR]

Bootstraps the playground base (or reuses --home), runs the first quarter's deploy and harvest once through
Dagster, then trains one candidate per method with the same code the `candidate_model` asset's training job
runs, and evaluates each on the held-out benchmark against the champion. Prints, per method, the overall
pass@1 delta with its paired-bootstrap 95% CI, the tokens the model generated during training (on-policy
sampling; the harvested traces every method starts from were generated once, at deploy), the tokens the
loss was computed on, and the training wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Each variant: a method and its settings on top of the config's `training` section (sft: the config's own).
VARIANTS: dict[str, tuple[str, dict]] = {
    "sft": ("sft", {}),
    "redi": ("redi", {"redi": {"alpha": 0.8, "learning_rate": 2e-5, "epochs": 1}}),
    "opsd": ("opsd", {"epochs": 1, "on_policy": {"samples_per_prompt": 4}}),
    "grpo": ("grpo", {"epochs": 1, "on_policy": {"samples_per_prompt": 4}}),
    # only the prompts the champion both solved and failed at deploy (on_policy.prompts: mixed)
    "grpo-mixed": ("grpo", {"epochs": 1, "on_policy": {"samples_per_prompt": 4, "prompts": "mixed"}}),
    "grpo-mixed-8": ("grpo", {"epochs": 1, "on_policy": {"samples_per_prompt": 8, "prompts": "mixed"}}),
    "opsd-mixed": ("opsd", {"epochs": 1, "on_policy": {"samples_per_prompt": 4, "prompts": "mixed"}}),
    # opsd without the per-token cap (it removed 96-98% of the KL mass on the playground)
    "opsd-noclip": ("opsd", {"epochs": 1, "opsd": {"clip": None}, "on_policy": {"samples_per_prompt": 4}}),
    "opsd-mixed-noclip": (
        "opsd",
        {"epochs": 1, "opsd": {"clip": None}, "on_policy": {"samples_per_prompt": 4, "prompts": "mixed"}},
    ),
    # three passes over the mixed prompts at 1e-4, and the same with hotter sampling (more varied groups)
    "grpo-mixed-8-e3": (
        "grpo",
        {"epochs": 3, "learning_rate": 1e-4, "on_policy": {"samples_per_prompt": 8, "prompts": "mixed"}},
    ),
    "grpo-mixed-8-hot": (
        "grpo",
        {
            "epochs": 3,
            "learning_rate": 1e-4,
            "on_policy": {"samples_per_prompt": 8, "prompts": "mixed", "temperature": 1.5},
        },
    ),
}
# What each on-policy method logs that explains its result: (curve key, label, how to summarise it).
DIAGNOSIS = {
    "grpo": [
        ("frac_reward_zero_std", "zero-variance groups", "mean"),
        ("reward", "reward", "ends"),
        ("entropy", "entropy", "ends"),
        ("completions/mean_length", "completion length", "mean"),
        ("kl", "KL to the start", "ends"),
    ],
    "opsd": [
        ("opsd/kl", "KL(teacher||student) per token", "ends"),
        ("opsd/kl_p50", "its median", "mean"),
        ("opsd/kl_p90", "its p90", "mean"),
        ("opsd/capped_share", "tokens over the cap", "mean"),
        ("opsd/kl_removed_share", "KL mass the cap removes", "mean"),
    ],
}


def diagnosis(method: str, curve: list[dict[str, float]]) -> str:
    """One line of the figures that explain an on-policy run: means, or the first and last logged values."""
    parts = []
    for key, label, how in DIAGNOSIS.get(method, []):
        values = [p[key] for p in curve if key in p]
        if not values:
            continue
        if how == "mean":
            parts.append(f"{label} {sum(values) / len(values):.3f}")
        else:
            head, tail = values[: max(1, len(values) // 5)], values[-max(1, len(values) // 5) :]
            parts.append(f"{label} {sum(head) / len(head):.3f} -> {sum(tail) / len(tail):.3f}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="sft,redi,opsd,grpo", help=f"variants, of {', '.join(VARIANTS)}")
    parser.add_argument("--config", default=str(ROOT / "flywheel.yaml"))
    parser.add_argument("--home", default="", help="a flywheel home to reuse (bootstrap and Q1 harvest kept)")
    parser.add_argument("--on-policy-lr", type=float, default=None, help="learning rate for opsd and grpo")
    parser.add_argument(
        "--start",
        default="",
        help="a variant trained first from the base; the others then start from its model (stacking)",
    )
    parser.add_argument(
        "--positives",
        default="1",
        help="shares of the quarter's verified positives to train on, e.g. 0.25,0.5,1 (human anchors stay whole)",
    )
    args = parser.parse_args()
    for variant in [*args.methods.split(","), *([args.start] if args.start else [])]:
        if variant not in VARIANTS:
            parser.error(f"--methods/--start: {variant!r} is not a variant; expected one of {', '.join(VARIANTS)}")

    home = Path(args.home or tempfile.mkdtemp(prefix="flywheel-methods-"))
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    os.environ["FLYWHEEL_CONFIG"] = args.config
    from flywheel_dagster.cli import ensure_instance_dir, quiet_libraries

    ensure_instance_dir(home / "dagster")
    quiet_libraries()

    import dagster as dg

    from flywheel_dagster import cycle as core
    from flywheel_dagster.bootstrap import bootstrap
    from flywheel_dagster.config import build_config, load_config, merged
    from flywheel_dagster.engines.transformers_engine import load_engine
    from flywheel_dagster.evaluation.benchmark import compare_evaluations, evaluate
    from flywheel_dagster.evaluation.fmt import with_ci
    from flywheel_dagster.partitions import quarterly_partitions
    from flywheel_dagster.resources import local_resources
    from flywheel_dagster.tasks import load_task
    from flywheel_dagster.training.candidate import train_candidate
    from jobs.definitions import build_defs

    cfg = load_config(args.config)
    resources = local_resources(home)
    registry = resources["mlflow"].registry(cfg.name)
    lake = resources["lake"].lake()
    task = load_task(cfg)
    quarter = quarterly_partitions(cfg.schedule.start_date).get_partition_keys()[0]
    defs = build_defs(cfg)
    started = time.perf_counter()
    base = bootstrap(cfg, registry, home / "models")
    print(f"home {home}; bootstrap {time.perf_counter() - started:.0f}s")
    if not lake.exists("training_dataset", quarter):
        started = time.perf_counter()
        upstream = ["deployment", "reasoning_traces", "harvested_traces", "training_dataset"]
        with dg.DagsterInstance.get() as instance:
            result = defs.resolve_job_def("flywheel_cycle").execute_in_process(
                partition_key=quarter,
                instance=instance,
                asset_selection=[dg.AssetKey(k) for k in upstream],
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
        assert result.success, "deploy/harvest failed"
        print(f"deploy + harvest of {quarter}: {time.perf_counter() - started:.0f}s")
    # The quarter's own materialization (a home that ran later cycles has newer ones).
    (record,) = (
        dg.DagsterInstance.get()
        .fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("training_dataset"), asset_partitions=[quarter]), limit=1
        )
        .records
    )
    composition = {k: v.value for k, v in record.asset_materialization.metadata.items() if k.startswith("composition/")}
    traffic = lake.read_table("reasoning_traces", quarter)
    print(
        f"traces: {traffic.num_rows} ({sum(traffic.column('tokens').to_pylist())} tokens generated at deploy); "
        f"positives {composition.get('composition/synthetic')}, pairs {composition.get('composition/pairs')}, "
        f"prompts {composition.get('composition/prompts')} ({composition.get('composition/prompts_unsolved')} unsolved)"
    )
    champion_dir = registry.local_path(base.ref)
    problems = task.benchmark(cfg.benchmark.problems_per_suite, cfg.benchmark.seed)
    settings = core.benchmark_settings(cfg)

    def benchmark(model_dir: Path):  # noqa: ANN202
        engine = load_engine(
            cfg.engine.kind,
            model_dir,
            device=cfg.engine.device,
            batch_size=cfg.engine.batch_size,
            kv_cache_bytes=cfg.engine.kv_cache_bytes,
        )
        try:
            return evaluate(engine, task, problems, settings)
        finally:
            engine.close()

    champion_eval = benchmark(champion_dir)

    def variant_config(variant: str, on_policy_lr: float | None):  # noqa: ANN202 - FlywheelConfig
        method, settings_of = VARIANTS[variant]
        overrides = {**settings_of, "method": method}
        if method in ("opsd", "grpo") and on_policy_lr:
            overrides["learning_rate"] = on_policy_lr
        training = merged(cfg.training.model_dump(mode="json"), overrides)
        return build_config({**cfg.model_dump(mode="json"), "training": training}, source=f"variant {variant}")

    def overall_delta(before, after):  # noqa: ANN001, ANN202 - evaluation tables -> SuiteComparison
        comparisons = compare_evaluations(before, after, cfg.benchmark.bootstrap_resamples, seed=cfg.benchmark.seed)
        return next(c for c in comparisons if c.suite == "overall")

    if args.start:  # stacking: the listed variants train from the start variant's model, and are judged against it
        start_dir = Path(tempfile.mkdtemp(prefix="flywheel-start-"))
        first = train_candidate(
            variant_config(args.start, None), task, champion_dir, lake, quarter, start_dir / "model"
        )
        champion_dir = registry_free_model(first, champion_dir, start_dir)
        base_eval, champion_eval = champion_eval, benchmark(champion_dir)
        gain = overall_delta(base_eval, champion_eval)
        print(
            f"start: {args.start} from the base, delta {with_ci(gain.delta, gain.delta_ci, signed=True)}; the rest start from it"
        )
    rows = []
    runs = [(v, float(f)) for f in args.positives.split(",") for v in args.methods.split(",")]
    for variant, share in runs:
        method = VARIANTS[variant][0]
        mcfg = variant_config(variant, args.on_policy_lr)
        with tempfile.TemporaryDirectory(prefix=f"flywheel-{method}-") as tmp:
            data = lake if share >= 1 else positives_share(lake, quarter, share, Path(tmp) / "lake")
            if share < 1:
                variant = f"{variant}@{share:g}"
            started = time.perf_counter()
            result = train_candidate(mcfg, task, champion_dir, data, quarter, Path(tmp) / "model")
            wall = time.perf_counter() - started
            model_dir = registry_free_model(result, champion_dir, Path(tmp))
            candidate_eval = benchmark(model_dir)
        overall = overall_delta(champion_eval, candidate_eval)
        lr = mcfg.training.learning_rate
        rows.append((variant, lr, overall, result, wall))
        print(
            f"  {variant} (lr {lr:g}): delta {with_ci(overall.delta, overall.delta_ci, signed=True)}, "
            f"{result.tokens_generated} generated, {result.tokens_trained} trained, {wall:.0f}s, {result.steps} steps"
        )
        if diagnosis(method, result.curve):
            print(f"    {diagnosis(method, result.curve)}")

    starting = f"{args.start} model" if args.start else "base"
    print(f"\nchampion ({starting}) pass@1 {rows[0][2].champion:.3f} on {rows[0][2].problems} held-out problems")
    print(
        f"{'method':<14}{'lr':>8}{'delta pass@1 [95% CI]':>28}{'tokens generated':>18}{'tokens trained':>16}"
        f"{'wall s':>8}{'steps':>7}"
    )
    for variant, lr, overall, result, wall in rows:
        ci = with_ci(overall.delta, overall.delta_ci, signed=True)
        print(
            f"{variant:<14}{lr:>8g}{ci:>28}{result.tokens_generated:>18,}{result.tokens_trained:>16,}"
            f"{wall:>8.0f}{result.steps:>7}"
        )


def positives_share(lake, quarter: str, share: float, root: Path):  # noqa: ANN001, ANN201 - Lake
    """A lake holding the quarter's training set with `share` of its verified positives (chosen by the hash of
    their problem, so a smaller share is a subset of a larger one), every human anchor, and the pairs and
    prompts of the problems kept."""
    import hashlib

    import pyarrow as pa

    from flywheel_dagster.records import TrainingSet
    from flywheel_dagster.traces.lake import Lake

    def kept(problem: str | None) -> bool:
        digest = hashlib.sha256((problem or "").encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share

    examples = TrainingSet.read(lake, quarter)
    keep = [
        o == "human" or kept(p)
        for o, p in zip(examples["origin"].to_pylist(), examples["problem_id"].to_pylist(), strict=True)
    ]
    files = {TrainingSet.EXAMPLES: examples.filter(pa.array(keep))}
    for name in (TrainingSet.PAIRS, TrainingSet.PROMPTS):
        table = TrainingSet.read(lake, quarter, name)
        files[name] = table.filter(pa.array([kept(p) for p in table["problem_id"].to_pylist()]))
    out = Lake(str(root))
    out.write_partition(TrainingSet.TABLE, quarter, files)
    positives = sum(1 for o, k in zip(examples["origin"].to_pylist(), keep, strict=True) if k and o != "human")
    print(f"  {share:g} of the positives: {positives} examples, {files[TrainingSet.PAIRS].num_rows} pairs")
    return out


def registry_free_model(result, champion_dir: Path, tmp: Path) -> Path:  # noqa: ANN001
    """The trained model as full weights (a LoRA adapter is merged onto the champion)."""
    if not result.adapter:
        return result.model_dir
    from flywheel_dagster.base_models import merged_model

    return merged_model(result.model_dir, champion_dir, tmp / "merged")


if __name__ == "__main__":
    main()
