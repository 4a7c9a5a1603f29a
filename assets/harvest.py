"""Harvest: verify, decontaminate, redact PII, filter, deduplicate, label, monitor, and build the training set.

Gates: the loop-health monitors on harvested_traces, and "zero PII" and "zero benchmark overlap" on
training_dataset, are blocking checks: an ERROR stops the cycle before anything is trained.
"""

import json

import dagster as dg

from assets import (
    _CONFIG,
    PARTITIONS,
    cycle_of,
    dagster_tags,
    gpu_op_tags,
    lake_file_result,
    mlflow_run_links,
    previous_of,
)
from assets.deploy import deployment, reasoning_traces
from flywheel_dagster import cycle as core
from flywheel_dagster import timing
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.curation import pii
from flywheel_dagster.curation.decontam import BenchmarkIndex
from flywheel_dagster.curation.harvest import Harvester, anchors_needed, build_training_dataset
from flywheel_dagster.curation.monitors import MONITORS, judge
from flywheel_dagster.resources import EngineResource, FlywheelConfigResource, LakeResource, MlflowResource
from flywheel_dagster.tasks import load_task
from flywheel_dagster.traces.lake import DATA_FILE
from flywheel_dagster.traces.schema import HARVESTED_SCHEMA, PAIRS_FILE, PROMPTS_FILE

MONITORS_FILE = "monitors.json"


def benchmark_prompts(cfg: FlywheelConfig, task) -> list[str]:  # noqa: ANN001
    return [p.prompt for p in task.benchmark(cfg.benchmark.problems_per_suite, cfg.benchmark.seed)]


def _previous_lengths(the_lake, key: str) -> list[int] | None:  # noqa: ANN001
    prev = previous_of(key)
    if prev is None or not the_lake.exists("harvested_traces", prev, MONITORS_FILE):
        return None
    return json.loads(the_lake.read_bytes("harvested_traces", prev, MONITORS_FILE)).get("reasoning_lengths")


@dg.asset(partitions_def=PARTITIONS, group_name="harvest", code_version="2", deps=[reasoning_traces])
def harvested_traces(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Every trace with its label and, when unused, the reason; PII redacted; loop-health monitors."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context)
    the_lake = lake.lake()
    task = load_task(cfg)
    harvester = Harvester(task, cfg.harvest, benchmark_prompts(cfg, task))
    with timing.compute("harvested_traces"):
        with the_lake.open_partition("harvested_traces", key) as part:
            out = part.parquet(DATA_FILE, HARVESTED_SCHEMA)
            for batch in the_lake.iter_batches("reasoning_traces", key):
                out.write_table(harvester.process(batch))
            monitors = harvester.monitors.result(_previous_lengths(the_lake, key))
            part.write_bytes(MONITORS_FILE, json.dumps(monitors).encode())
    written = part.files[DATA_FILE]
    counts = harvester.stats.as_counts()
    figures = {name: monitors[name] for name in MONITORS if monitors[name] is not None}

    registry = mlflow.registry(cfg.name)
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
    )


def _monitor_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=harvested_traces,
        blocking=True,
        partitions_def=PARTITIONS,
        name=name,
        description=f"Loop-health monitor {name}: WARN past the warn level, ERROR (blocks training) past the block level.",
    )
    def check(
        context: dg.AssetCheckExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
    ) -> dg.AssetCheckResult:
        figures = json.loads(lake.lake().read_bytes("harvested_traces", context.partition_key, MONITORS_FILE))
        v = judge(name, figures[name], flywheel_config.load().harvest.monitors)
        return dg.AssetCheckResult(
            passed=v.level in ("ok", "n/a"),
            severity=dg.AssetCheckSeverity.ERROR if v.level == "block" else dg.AssetCheckSeverity.WARN,
            description=v.message,
            metadata={"value": v.value if v.value is not None else "n/a", "level": v.level},
        )

    return check


# Collapse and drift monitors, one blocking check each.
harvest_monitor_checks = [_monitor_check(name) for name in MONITORS]


# With the model-based rephraser on, building the training set runs the deployed model: a GPU step.
_REPHRASES = _CONFIG.harvest.reformat.get("rephrase", 0) > 0


@dg.asset(
    partitions_def=PARTITIONS,
    group_name="harvest",
    code_version="3",
    deps=[harvested_traces, deployment],
    pool="gpu" if _REPHRASES else None,
    op_tags=gpu_op_tags() if _REPHRASES else None,
)
def training_dataset(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    """Verified positives (reformatted by the configured strategies) plus human anchors at the configured
    share, split train/validation by problem; and positive/negative pairs of the same prompt."""
    cfg = flywheel_config.load()
    key, index = cycle_of(context)
    the_lake = lake.lake()
    task = load_task(cfg)
    # The anchor pool covers the most any outcome can need: the share at the most positives this quarter can
    # yield, or the floor when it yields none (plus one spare).
    most_positives = sum(
        int((b.column(0).to_numpy(zero_copy_only=False) == "positive").sum())
        for b in the_lake.iter_batches("harvested_traces", key, columns=["label"])
    )
    pool = max(anchors_needed(most_positives, cfg.harvest.anchor_fraction), cfg.harvest.min_training_examples) + 1
    anchors = task.anchors(pool, seed=1000 + index)
    eng = None
    if cfg.harvest.reformat.get("rephrase", 0) > 0:
        registry = mlflow.registry(cfg.name)
        deployed = registry.version(core.read_json(the_lake, "deployment", key, core.DEPLOYMENT_FILE)["version"])
        eng = engine.load(cfg, registry.local_path(deployed))
    try:
        with timing.compute("training_dataset"):
            result = build_training_dataset(
                the_lake.iter_batches("harvested_traces", key),
                anchors,
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
        "training_dataset", key, {DATA_FILE: result.table, PAIRS_FILE: result.pairs, PROMPTS_FILE: result.prompts}
    )
    written = files[DATA_FILE]
    return lake_file_result(
        written,
        pairs_uri=dg.MetadataValue.path(files[PAIRS_FILE].uri),
        pairs_sha256=files[PAIRS_FILE].sha256,
        prompts_uri=dg.MetadataValue.path(files[PROMPTS_FILE].uri),
        prompts_sha256=files[PROMPTS_FILE].sha256,
        **{f"composition/{k}": v for k, v in sorted(result.composition.items())},
        anchor_fraction=round(result.composition["human"] / max(written.rows, 1), 4),
    )


@dg.asset_check(asset=training_dataset, blocking=True, partitions_def=PARTITIONS, name="no_pii")
def no_pii(context: dg.AssetCheckExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource):  # noqa: ANN201
    """Zero PII detections in the training set's prompts and completions, the pairs and the on-policy prompts."""
    cfg = flywheel_config.load()
    the_lake = lake.lake()
    found = {}
    for name, columns in (
        (DATA_FILE, ["prompt", "completion"]),
        (PAIRS_FILE, ["prompt", "chosen", "rejected"]),
        (PROMPTS_FILE, ["prompt", "solution"]),
    ):
        if name != DATA_FILE and not the_lake.exists("training_dataset", context.partition_key, name):
            continue  # a partition written before the file existed
        table = the_lake.read_table("training_dataset", context.partition_key, name)
        for col in columns:
            for kind, n in pii.count_detections(table.column(col), cfg.harvest.redact_names).items():
                found[f"{name}:{col}:{kind}"] = n
    return dg.AssetCheckResult(
        passed=not found,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no PII detected" if not found else f"PII detected in the training set: {found}",
        metadata={"detections": sum(found.values()), **{k: v for k, v in found.items()}},
    )


@dg.asset_check(asset=training_dataset, blocking=True, partitions_def=PARTITIONS, name="no_benchmark_overlap")
def no_benchmark_overlap(
    context: dg.AssetCheckExecutionContext, flywheel_config: FlywheelConfigResource, lake: LakeResource
):  # noqa: ANN201
    """No training prompt shares an n-gram with a problem of the benchmark that judges the candidate."""
    cfg = flywheel_config.load()
    task = load_task(cfg)
    index = BenchmarkIndex.for_task(task, benchmark_prompts(cfg, task), cfg.harvest.decontamination_ngram)
    the_lake = lake.lake()
    table = the_lake.read_table("training_dataset", context.partition_key)
    hits = [
        e
        for e, p in zip(table.column("example_id").to_pylist(), table.column("prompt").to_pylist(), strict=True)
        if index.contaminated(p)
    ]
    if the_lake.exists("training_dataset", context.partition_key, PROMPTS_FILE):
        prompts = the_lake.read_table("training_dataset", context.partition_key, PROMPTS_FILE).column("prompt")
        hits += [f"prompt/{p}" for p in prompts.to_pylist() if index.contaminated(p)]
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
