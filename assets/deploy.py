"""Deploy: which model serves this quarter, and the reasoning traces it produced."""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC

import dagster as dg
import pyarrow as pa

from assets import Stage, dagster_tags, lake_file_result, mlflow_run_links, open_cycle, previous_of
from flywheel_dagster import audit, erasure, timing
from flywheel_dagster import cycle as core
from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.curation import ingest
from flywheel_dagster.records import CHAMPION_MODEL, DEPLOYMENT, REASONING_TRACES, Deployment, TraceSet
from flywheel_dagster.registry import weights_sha256
from flywheel_dagster.resources import EngineResource, FlywheelConfigResource, LakeResource, MlflowResource
from flywheel_dagster.serving.capture import SERVING_LOGS
from flywheel_dagster.serving.rollback import rollback_after
from flywheel_dagster.tasks import load_task
from flywheel_dagster.traces.lake import DATA_FILE, Lake
from flywheel_dagster.traces.schema import TRACE_SCHEMA


def build(stage: Stage) -> list[dg.AssetsDefinition]:
    # Orders cycles: a quarter's deployment is what the quarter before promoted. The model itself travels
    # through the MLflow registry (alias cycle_<previous>), since champion_model -> deployment across partitions
    # would be a dependency loop between two assets, which Dagster forbids.
    previous = dg.AssetDep(DEPLOYMENT, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1))
    return [
        stage.asset("deploy", "3", deps=[previous])(deployment),
        stage.asset("deploy", "3", deps=[DEPLOYMENT], gpu=True)(reasoning_traces),
    ]


def deployment(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The champion that served this quarter's traffic (from the registry), with where it came from."""
    cfg, key, index, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
    finished = context.instance.get_materialized_partitions(dg.AssetKey(CHAMPION_MODEL))
    started = context.instance.get_materialized_partitions(dg.AssetKey(DEPLOYMENT))
    try:
        ref, via = core.resolve_deployment(
            registry,
            key,
            previous_of(key, cfg),
            set(finished),
            set(started),
            lambda c: rollback_after(the_lake, c),
            first_cycle=cfg.schedule.start_date,
        )
    except core.CycleOrderError as err:  # one line in the UI, before anything is trained or written
        raise dg.Failure(description=str(err), allow_retries=False) from None
    sha = weights_sha256(registry.local_path(ref))
    with registry.stage(key, index, "deploy", dagster_tags(context, cfg)) as run_id:
        registry.log_params(
            run_id, {"model_version": ref.version, "via_alias": via, "weights_sha256": sha, "model_run_id": ref.run_id}
        )
    Deployment(
        cycle=key,
        model_name=ref.name,
        version=ref.version,
        run_id=ref.run_id,
        source=ref.source,
        via_alias=via,
        weights_sha256=sha,
        previous_cycle=previous_of(key, cfg),
    ).write(the_lake)
    return dg.MaterializeResult(
        metadata={
            "model": f"{ref.name} v{ref.version}",
            "via_alias": via,
            "previous_cycle": previous_of(key, cfg) or "none (first cycle)",
            **mlflow_run_links(cfg, registry, run_id),
            "model_version": dg.MetadataValue.url(registry.model_version_url(cfg.ui.mlflow_url, ref.version)),
            "weights_sha256": sha,
            "model_uri": dg.MetadataValue.path(ref.source),
            "cycle_index": index,
        }
    )


def reasoning_traces(
    context: dg.AssetExecutionContext,
    flywheel_config: FlywheelConfigResource,
    lake: LakeResource,
    mlflow: MlflowResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    """The quarter's traffic: production logs ingested for the partition's time window (traffic.source
    'logs', bad lines quarantined with a reason), or simulated traffic through the deployed model."""
    cfg, key, index, the_lake, registry = open_cycle(context, flywheel_config, lake, mlflow)
    if cfg.traffic.source == "logs":
        return _ingest_logs(context, cfg, the_lake, key)
    ref = registry.version(Deployment.read(the_lake, key).version)
    task = load_task(cfg)
    eng = engine.load(cfg, registry.local_path(ref))
    try:
        with timing.compute(REASONING_TRACES):
            traces = core.capture_traffic(cfg, task, eng, key, index, ref)
    finally:
        eng.close()
    written = the_lake.write_table(TraceSet.TABLE, key, traces)
    tokens = sum(traces.column("tokens").to_pylist())
    return lake_file_result(
        written,
        source="simulated",
        model=f"{ref.name} v{ref.version}",
        problems=cfg.traffic.problems_per_cycle,
        samples_per_problem=cfg.traffic.samples_per_problem,
        tokens_generated=tokens,
        truncated=traces.column("finish_reason").to_pylist().count("length"),
    )


def _ingest_logs(
    context: dg.AssetExecutionContext, cfg: FlywheelConfig, the_lake: Lake, key: str
) -> dg.MaterializeResult:
    window_ = context.partition_time_window
    window = ingest.Window(window_.start.astimezone(UTC), window_.end.astimezone(UTC))
    # No paths configured: what `flywheel serve` captured (serving.logs_dir, else the local lake's serving_logs).
    paths = cfg.ingest.paths or [cfg.serving.logs_dir or f"{the_lake.root}/{SERVING_LOGS}"]
    files = ingest.find_log_files(paths, window)
    sources = audit.input_manifest(paths, (window.start.isoformat(), window.end.isoformat()), files)
    erasure.refuse_erased(the_lake, sources, error=lambda problem: dg.Failure(description=problem))
    settings = ingest.Settings(key, window, cfg.ingest.max_record_bytes, cfg.ingest.reasoning_markup)
    ingestor = ingest.Ingestor(load_task(cfg), settings)
    with timing.compute(REASONING_TRACES), _ingest_engine(cfg, settings) as (ingested, engine):
        # Committed together: an erasure request starting between the two could leave one new, one old.
        with the_lake.open_partitions((TraceSet.TABLE, key), (ingest.QUARANTINE_TABLE, key)) as (
            traces_part,
            quarantine_part,
        ):
            traces_part.write_bytes(TraceSet.SOURCES, json.dumps(sources, sort_keys=True).encode())
            traces_out = traces_part.parquet(TraceSet.DATA, TRACE_SCHEMA)
            quarantine_out = quarantine_part.parquet(DATA_FILE, ingest.QUARANTINE_SCHEMA)
            for traces, quarantined in ingested(ingestor, files):
                traces_out.write_table(traces)
                quarantine_out.write_table(quarantined)
    stats = ingestor.stats
    if stats.lines_read != stats.lines_ingested + stats.lines_quarantined:  # the invariant the tests check
        raise RuntimeError(f"ingest lost lines: {stats.as_metadata()}")
    if stats.contexts_unsearched:
        context.log.warning(
            f"{stats.contexts_unsearched} traces: the PII detectors failed on their request's other turns (a bug), "
            "so a value named only there is not redacted where the trace repeats it (ingest/contexts_unsearched)"
        )
    written = traces_part.files[TraceSet.DATA]
    return lake_file_result(
        written,
        source="logs",
        log_files=dg.MetadataValue.json(files[:50]),
        ingest_engine=engine,
        quarantine_uri=dg.MetadataValue.path(quarantine_part.files[DATA_FILE].uri),
        **{f"ingest/{k}": v for k, v in stats.as_metadata().items()},
    )


@contextmanager
def _ingest_engine(
    cfg: FlywheelConfig, settings: ingest.Settings
) -> Iterator[tuple[Callable[[ingest.Ingestor, list[str]], Iterator[tuple[pa.Table, pa.Table]]], str]]:
    """(ingestor, files) -> its (traces, quarantine) tables, and the engine in words: in this process (compute.engine
    local), or with Ray workers ingesting pieces of the files (ray) when every node of the cluster is this machine
    (the workers open the files by absolute path)."""

    def local(ingestor: ingest.Ingestor, files: list[str]) -> Iterator[tuple[pa.Table, pa.Table]]:
        return ingestor.tables(files)

    if cfg.compute.engine == "local":
        yield local, "local"
        return
    from flywheel_dagster.curation import ray_ingest
    from flywheel_dagster.engines.replicas import cluster_is_local, ensure_ray

    c = cfg.compute
    ensure_ray(c.ray_address)
    if not cluster_is_local():
        yield local, "local: the Ray cluster's nodes cannot open this machine's log files"
        return
    actors = ray_ingest.start_workers(cfg, settings, c.ray_workers, c.ray_address)
    try:
        yield (
            (lambda ingestor, files: ray_ingest.ingest_tables(ingestor, files, actors)),
            f"ray ({len(actors)} workers)",
        )
    finally:
        ray_ingest.stop_workers(actors)
