"""Harvest: verify, decontaminate, redact PII, filter, deduplicate, label, monitor, and build the training set.

Gates: the loop-health monitors on harvested_traces, and "zero PII" and "zero benchmark overlap" on
training_dataset, are blocking checks: an ERROR stops the cycle before anything is trained.
"""

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import dagster as dg
import pyarrow as pa

from assets import Stage, dagster_tags, lake_file_result, mlflow_run_links, open_cycle, previous_of
from flywheel_dagster import timing
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.curation import pii
from flywheel_dagster.curation.decontam import BenchmarkIndex
from flywheel_dagster.curation.harvest import Harvester, build_training_dataset
from flywheel_dagster.curation.monitors import MONITORS, judge
from flywheel_dagster.records import (
    DEPLOYMENT,
    HARVESTED_TRACES,
    REASONING_TRACES,
    TRAINING_DATASET,
    Deployment,
    HarvestedSet,
    TraceSet,
    TrainingSet,
)
from flywheel_dagster.resources import EngineResource, FlywheelConfigResource, LakeResource, MlflowResource
from flywheel_dagster.tasks import load_task
from flywheel_dagster.tasks.base import TaskSource
from flywheel_dagster.traces.lake import Lake
from flywheel_dagster.traces.schema import HARVESTED_SCHEMA


def benchmark_prompts(cfg: FlywheelConfig, task: TaskSource) -> list[str]:
    return [p.prompt for p in task.benchmark(cfg.benchmark.problems_per_suite, cfg.benchmark.seed)]


def _previous_monitors(cfg: FlywheelConfig, the_lake: Lake, key: str) -> dict | None:
    prev = previous_of(key, cfg)
    return HarvestedSet.monitors(the_lake, prev) if prev is not None else None


def build(stage: Stage) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """harvested_traces and training_dataset, the monitors' checks and the training set's PII and overlap checks."""
    # With the model-based rephraser on, building the training set runs the deployed model: a GPU step.
    rephrases = stage.cfg.harvest.reformat.get("rephrase", 0) > 0
    assets = [
        stage.asset("harvest", "2", deps=[REASONING_TRACES])(harvested_traces),
        stage.asset("harvest", "3", deps=[HARVESTED_TRACES, DEPLOYMENT], gpu=rephrases)(training_dataset),
    ]
    # Collapse and drift monitors, one blocking check each.
    monitors = [
        stage.check(
            HARVESTED_TRACES,
            name,
            f"Loop-health monitor {name}: WARN past the warn level, ERROR (blocks training) past the block level.",
        )(_monitor_check(name))
        for name in MONITORS
    ]
    training_checks = [
        stage.check(TRAINING_DATASET, "no_pii")(no_pii),
        stage.check(TRAINING_DATASET, "no_benchmark_overlap")(no_benchmark_overlap),
    ]
    return assets, [*monitors, *training_checks]


def harvested_traces(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Every trace with its label and, when unused, the reason; PII redacted; loop-health monitors."""
    cfg, key, index, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
    task = load_task(cfg)
    prompts = benchmark_prompts(cfg, task)
    harvester = Harvester(task, cfg.harvest, prompts)
    with timing.compute(HARVESTED_TRACES):
        with the_lake.open_partition(HarvestedSet.TABLE, key) as part, _harvested(cfg, harvester, prompts) as run:
            out = part.parquet(HarvestedSet.DATA, HARVESTED_SCHEMA)
            for table in run(the_lake, key):
                out.write_table(table)
            monitors = harvester.monitors.result(None, _previous_monitors(cfg, the_lake, key))
            part.write_bytes(HarvestedSet.MONITORS, json.dumps(monitors).encode())
    written = part.files[HarvestedSet.DATA]
    counts = harvester.stats.as_counts()
    spilled = sum(store.spilled for store in harvester.state)  # past dedup.state_memory_mb
    harvester.close()
    figures = {name: monitors[name] for name in MONITORS if monitors[name] is not None}

    with registry.stage(key, index, "harvest", dagster_tags(context, cfg)) as run_id:
        registry.log_metrics(
            run_id,
            {
                **{f"harvest/{k.replace('/', '_')}": v for k, v in counts.items()},
                **{f"pii/{k}": v for k, v in harvester.stats.pii.items()},
                **{f"monitor/{k}": v for k, v in figures.items()},
            },
            step=index,
        )
    return lake_file_result(
        written,
        **mlflow_run_links(cfg, registry, run_id),
        **{f"count/{k}": v for k, v in counts.items()},
        **{f"pii/{k}": harvester.stats.pii.get(k, 0) for k in pii.PII_TYPES},
        **{f"monitor/{k}": v for k, v in figures.items()},
        **{"harvest_state/keys_spilled_to_disk": spilled},
    )


@contextmanager
def _harvested(
    cfg: FlywheelConfig, harvester: Harvester, prompts: list[str]
) -> Iterator[Callable[[Lake, str], Iterator[pa.Table]]]:
    """(lake, cycle) -> the harvested tables of its reasoning_traces: in this process (compute.engine local) or
    with Ray workers (ray), which read the row groups themselves where they can reach the lake."""
    if cfg.compute.engine == "local":
        yield lambda lake, key: (harvester.process(b) for b in lake.iter_batches(TraceSet.TABLE, key))
        return
    from flywheel_dagster.curation import ray_harvest

    c = cfg.compute
    actors = ray_harvest.start_workers(cfg, prompts, c.ray_workers, c.ray_address)

    def run(lake: Lake, key: str) -> Iterator[pa.Table]:
        if ray_harvest.workers_read(lake):
            batches: Iterable = lake.row_groups(TraceSet.TABLE, key)
        else:
            batches = lake.iter_batches(TraceSet.TABLE, key)
        return ray_harvest.harvest_batches(harvester, batches, actors)

    try:
        yield run
    finally:
        ray_harvest.stop_workers(actors)


def _monitor_check(name: str) -> Callable[..., dg.AssetCheckResult]:
    def check(
        context: dg.AssetCheckExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
    ) -> dg.AssetCheckResult:
        figures = HarvestedSet.monitors(lake.lake(), context.partition_key)
        v = judge(name, figures[name], flywheel_config.load().harvest.monitors)
        return dg.AssetCheckResult(
            passed=v.level in ("ok", "n/a"),
            severity=dg.AssetCheckSeverity.ERROR if v.level == "block" else dg.AssetCheckSeverity.WARN,
            description=v.message,
            metadata={"value": v.value if v.value is not None else "n/a", "level": v.level},
        )

    return check


def training_dataset(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    """Verified positives (reformatted by the configured strategies) plus human anchors at the configured
    share, split train/validation by problem; and positive/negative pairs of the same prompt."""
    cfg, key, index, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
    task = load_task(cfg)
    eng = None
    if cfg.harvest.reformat.get("rephrase", 0) > 0:
        deployed = registry.version(Deployment.read(the_lake, key).version)
        eng = engine.load(cfg, registry.local_path(deployed))
    try:
        # Read twice (the pairs' negatives are known once every positive is): from one open file, so both reads see
        # the same rows even if harvested_traces is materialized again meanwhile.
        with timing.compute(TRAINING_DATASET), the_lake.open_file(HarvestedSet.TABLE, key) as harvested:
            result = build_training_dataset(
                lambda columns: harvested.batches(columns),
                lambda n: task.anchors(n, seed=1000 + index),  # as many as the positives taken need
                cfg.harvest,
                task,
                engine=eng,
                rephrase_tokens=cfg.traffic.max_new_tokens,
                seed=cfg.task.seed * 1000 + index,
            )
    finally:
        if eng is not None:
            eng.close()
    files = the_lake.write_partition(
        TrainingSet.TABLE,
        key,
        {TrainingSet.EXAMPLES: result.table, TrainingSet.PAIRS: result.pairs, TrainingSet.PROMPTS: result.prompts},
    )
    written = files[TrainingSet.EXAMPLES]
    return lake_file_result(
        written,
        pairs_uri=dg.MetadataValue.path(files[TrainingSet.PAIRS].uri),
        pairs_sha256=files[TrainingSet.PAIRS].sha256,
        prompts_uri=dg.MetadataValue.path(files[TrainingSet.PROMPTS].uri),
        prompts_sha256=files[TrainingSet.PROMPTS].sha256,
        **{f"composition/{k}": v for k, v in sorted(result.composition.items())},
        anchor_fraction=round(result.composition["human"] / max(written.rows, 1), 4),
    )


def pii_in_training_set(the_lake: Lake, key: str, names: bool) -> dict[str, int]:
    """PII detections in the text columns of the cycle's training set, by file, column and type (none: {})."""
    found = {}
    for name, columns in TrainingSet.TEXT_COLUMNS.items():
        table = TrainingSet.read(the_lake, key, name)
        if table is None:
            continue  # a partition written before the file existed
        for col in columns:
            for kind, n in pii.count_detections(table.column(col), names).items():
                found[f"{name}:{col}:{kind}"] = n
    return found


def no_pii(
    context: dg.AssetCheckExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
) -> dg.AssetCheckResult:
    """Zero PII detections in the training set's prompts and completions, the pairs and the on-policy prompts."""
    cfg = flywheel_config.load()
    found = pii_in_training_set(lake.lake(), context.partition_key, cfg.harvest.redact_names)
    return dg.AssetCheckResult(
        passed=not found,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no PII detected" if not found else f"PII detected in the training set: {found}",
        metadata={"detections": sum(found.values()), **{k: v for k, v in found.items()}},
    )


def no_benchmark_overlap(
    context: dg.AssetCheckExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
) -> dg.AssetCheckResult:
    """No training prompt shares an n-gram with a problem of the benchmark that judges the candidate."""
    cfg = flywheel_config.load()
    task = load_task(cfg)
    index = BenchmarkIndex.for_task(task, benchmark_prompts(cfg, task), cfg.harvest.decontamination_ngram)
    the_lake = lake.lake()
    table = TrainingSet.read(the_lake, context.partition_key)
    hits = [
        e
        for e, p in zip(table.column("example_id").to_pylist(), table.column("prompt").to_pylist(), strict=True)
        if index.contaminated(p)
    ]
    prompts = TrainingSet.read(the_lake, context.partition_key, TrainingSet.PROMPTS)
    if prompts is not None:
        hits += [f"prompt/{p}" for p in prompts.column("prompt").to_pylist() if index.contaminated(p)]
    return dg.AssetCheckResult(
        passed=not hits,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(hits)} training examples overlap the benchmark" if hits else "no overlap with the benchmark",
        metadata={
            "overlapping": len(hits),
            "benchmark_problems": index.problems,
            "examples": dg.MetadataValue.json(hits[:20]),
        },
    )
