"""MLflow: one experiment per flywheel, a parent run per cycle with nested runs per stage, and the model
registry whose alias `champion` is the system of record for which model serves.

Aliases: `champion` (serving now), `base` (the bootstrap model), `cycle_<key>` (the champion at the end of
cycle <key>; the next cycle deploys exactly that, even when it is rerun after later cycles moved `champion`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

CHAMPION = "champion"
BASE = "base"
TREND_RUN = "flywheel-trend"


BASE_VERSION_TAG = "flywheel.base_version"


def cycle_alias(cycle: str) -> str:
    return "cycle_" + cycle.replace("-", "_")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str | None
    source: str


def weights_sha256(model_dir: str | Path) -> str:
    """Hash of every weights file in a model folder (safetensors/bin), in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in {".safetensors", ".bin"})
    if not files:
        raise FileNotFoundError(f"no weights files (*.safetensors, *.bin) in model folder {model_dir}")
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class Registry:
    """Runs, registered model versions and aliases for one flywheel."""

    def __init__(
        self, tracking_uri: str, model_name: str, artifact_location: str | None = None, cache_dir: str | None = None
    ) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        exp = self.client.get_experiment_by_name(model_name)
        self.experiment_id = (
            exp.experiment_id if exp else self.client.create_experiment(model_name, artifact_location=artifact_location)
        )

    # ---- runs -------------------------------------------------------------------------------------
    def _find_run(self, filter_string: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=1, order_by=["attributes.start_time DESC"]
        )
        return runs[0].info.run_id if runs else None

    def cycle_run(self, cycle: str, cycle_index: int) -> str:
        """The parent run of a cycle, created on first use; reruns reuse it."""
        found = self._find_run(f"tags.`flywheel.cycle` = '{cycle}' and tags.`flywheel.kind` = 'cycle'")
        if found:
            return found
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"cycle-{cycle}",
            tags={"flywheel.cycle": cycle, "flywheel.kind": "cycle", "flywheel.cycle_index": str(cycle_index)},
        )
        return run.info.run_id

    def stage_run(self, cycle: str, cycle_index: int, stage: str, tags: dict[str, str] | None = None) -> str:
        """A new nested run for one stage of a cycle (each materialization gets its own)."""
        parent = self.cycle_run(cycle, cycle_index)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{stage}-{cycle}",
            tags={
                "mlflow.parentRunId": parent,
                "flywheel.cycle": cycle,
                "flywheel.kind": "stage",
                "flywheel.stage": stage,
                **(tags or {}),
            },
        )
        return run.info.run_id

    @contextmanager
    def stage(self, cycle: str, cycle_index: int, stage: str, tags: dict[str, str] | None = None) -> Iterator[str]:
        """A nested run for one stage of a cycle that always ends: FINISHED when the block completes, FAILED
        when it raises. The cycle's parent run is RUNNING while a stage runs and then takes the stage's final
        status, so no run is left RUNNING when a step fails or a cycle stops (say, for an approval)."""
        run_id = self.stage_run(cycle, cycle_index, stage, tags)
        parent = self.cycle_run(cycle, cycle_index)
        self.client.update_run(parent, status="RUNNING")
        if tags:
            self.set_tags(parent, {k: v for k, v in tags.items() if k.startswith("dagster.")})
        try:
            yield run_id
        except BaseException:
            self.end_run(run_id, "FAILED")
            self.end_run(parent, "FAILED")
            raise
        self.end_run(run_id)
        self.end_run(parent)

    def trend_run(self) -> str:
        """The run holding every cycle's headline metrics at step = cycle index (the trend chart). It is ended
        after each cycle's point (log_trend); MLflow keeps taking metrics on a finished run."""
        found = self._find_run(f"tags.`flywheel.kind` = '{TREND_RUN}'")
        if found:
            return found
        return self.client.create_run(
            self.experiment_id, run_name=TREND_RUN, tags={"flywheel.kind": TREND_RUN}
        ).info.run_id

    def log_trend(self, metrics: dict[str, float], step: int) -> None:
        """One cycle's point on the trend run, which is left FINISHED (not RUNNING) in between."""
        run_id = self.trend_run()
        self.log_metrics(run_id, metrics, step)
        self.end_run(run_id)

    # ---- links into the MLflow UI (its base URL comes from config: ui.mlflow_url) ---------------------
    def run_url(self, ui_url: str, run_id: str) -> str:
        return f"{ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def artifact_url(self, ui_url: str, run_id: str, path: str) -> str:
        """The MLflow UI's run page opened at an artifact (HTML artifacts render there)."""
        return f"{self.run_url(ui_url, run_id)}/artifactPath/{quote(path)}"

    def model_version_url(self, ui_url: str, version: str) -> str:
        return f"{ui_url}/#/models/{quote(self.model_name)}/versions/{version}"

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def curve_logger(self, run_id: str) -> Callable[[int, dict[str, float]], None]:
        """An on_log callback for training: each logged point becomes `train/<name>` metrics at its step."""

        def log(step: int, point: dict[str, float]) -> None:
            self.log_metrics(run_id, {f"train/{k}": v for k, v in point.items() if k != "step"}, step)

        return log

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def set_experiment_tag(self, key: str, value: str) -> None:
        self.client.set_experiment_tag(self.experiment_id, key, value)

    def experiment_tag(self, key: str) -> str | None:
        return self.client.get_experiment(self.experiment_id).tags.get(key)

    def log_artifact(self, run_id: str, path: str) -> None:
        """Attach a local file to the run (the MLflow UI serves it)."""
        self.client.log_artifact(run_id, path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # ---- models -----------------------------------------------------------------------------------
    def register_model_dir(self, run_id: str, model_dir: str | Path, tags: dict[str, str] | None = None) -> ModelRef:
        """Log a Hugging Face model folder as the run's `model` artifact and register it as a new version."""
        from mlflow.exceptions import MlflowException

        self.client.log_artifacts(run_id, str(model_dir), artifact_path="model")
        try:
            self.client.create_registered_model(self.model_name)
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        source = self.client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
        mv = self.client.create_model_version(self.model_name, source=source, run_id=run_id, tags=tags or {})
        return ModelRef(self.model_name, str(mv.version), run_id, source)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def alias(self, alias: str) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None
        return ModelRef(self.model_name, str(mv.version), mv.run_id, mv.source)

    def version(self, version: str) -> ModelRef:
        mv = self.client.get_model_version(self.model_name, version)
        return ModelRef(self.model_name, str(mv.version), mv.run_id, mv.source)

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    def run_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    def set_version_tags(self, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.model_name, version, k, v)

    def local_path(self, ref: ModelRef) -> Path:
        """A local folder with the version's full weights, loadable by any engine or trainer.

        A version registered as a LoRA adapter is merged onto its base version (tag `flywheel.base_version`)
        once, into the cache folder; `files_path` gives the adapter itself.
        """
        files = self.files_path(ref)
        if (files / "config.json").exists():
            return files
        base_version = self.client.get_model_version(self.model_name, ref.version).tags.get(BASE_VERSION_TAG)
        if not base_version:
            raise RuntimeError(
                f"model version {ref.version} is a LoRA adapter without a '{BASE_VERSION_TAG}' tag; "
                "cannot tell which weights it applies to"
            )
        if self.cache_dir is None:
            raise RuntimeError(f"model version {ref.version} is an adapter; a cache_dir is needed to merge it")
        target = self.cache_dir / f"{self.model_name}-v{ref.version}-merged"
        if not (target / "config.json").exists():
            from flywheel_dagster.base_models import merged_model

            target.parent.mkdir(parents=True, exist_ok=True)
            merged_model(files, self.local_path(self.version(base_version)), target)
        return target

    def files_sha256(self, ref: ModelRef) -> str:
        """Hash of every file of the version as registered (weights, config, tokenizer; or the adapter)."""
        from flywheel_dagster.hashing import tree_sha256

        return tree_sha256(self.files_path(ref))

    def is_adapter(self, ref: ModelRef) -> bool:
        return not (self.files_path(ref) / "config.json").exists()

    def files_path(self, ref: ModelRef) -> Path:
        """A local folder with the version's files as registered (full weights, or a LoRA adapter)."""
        parsed = urlparse(ref.source)
        if parsed.scheme in ("", "file"):
            path = Path(unquote(parsed.path)) if parsed.scheme else Path(ref.source)
            if _is_model_dir(path):
                return path
        if self.cache_dir is None:
            raise RuntimeError(
                f"model version {ref.version} lives at {ref.source}; a cache_dir is needed to download it"
            )
        target = self.cache_dir / f"{self.model_name}-v{ref.version}"
        if not _is_model_dir(target):
            import mlflow.artifacts

            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            mlflow.artifacts.download_artifacts(
                artifact_uri=ref.source, dst_path=str(tmp), tracking_uri=self.tracking_uri
            )
            inner = tmp / "model" if _is_model_dir(tmp / "model") else tmp
            inner.rename(target)
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() or (path / "adapter_config.json").exists()
