"""One pydantic model of flywheel.yaml, its presets, and errors that name the field.

A config file picks a preset and overrides any field of it:

    preset: playground
    traffic:
      problems_per_cycle: 600

Unknown fields are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import copy
import datetime as dt
import glob
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator

PresetName = Literal["playground", "smollm2", "production"]
CONFIG_ENV = "FLYWHEEL_CONFIG"
HOME_ENV = "FLYWHEEL_HOME"
PRESET_ENV = "FLYWHEEL_PRESET"


class ConfigError(ValueError):
    """flywheel.yaml (or a preset override) is invalid; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    """Where problems come from and how answers are verified."""

    source: Literal["playground", "gsm8k"]
    seed: int = 0
    data_dir: str | None = Field(
        default=None, description="GSM8K folder with train.jsonl/test.jsonl; default: the repo's data/gsm8k"
    )
    prompt_format: Literal["plain", "chatml"] = Field(
        default="plain", description="chatml wraps GSM8K questions in ChatML turns (instruct models like SmolLM2)"
    )


class ModelConfig(_Strict):
    """The cycle-0 base model."""

    kind: Literal["playground-tiny", "smollm2-gguf", "hf"]
    hf_path: str | None = Field(default=None, description="HF model id or folder, for kind 'hf'")
    hidden_size: int = Field(default=128, gt=0)
    num_layers: int = Field(default=3, gt=0)
    num_heads: int = Field(default=4, gt=0)
    intermediate_size: int = Field(default=384, gt=0)
    max_length: int = Field(default=128, gt=8, description="prompt + completion tokens")


class BootstrapConfig(_Strict):
    """Training of the cycle-0 base on human-style solutions (playground only)."""

    examples: int = Field(default=9000, gt=0)
    epochs: float = Field(default=3.0, gt=0)
    learning_rate: float = Field(default=2e-3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    reference_shown_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="extra examples (as a share of `examples`) with a worked solution shown in the prompt "
        "(the task's teacher_template): a pretrained model can read a solution in its context; the tiny one "
        "learns it here, so that opsd's teacher is meaningful",
    )


# vLLM's CPU worker sizes its KV cache as a fraction of its NUMA node's memory, which fails on a machine whose
# node is smaller or busy; in bytes it starts wherever that much memory is free. Enough for the presets' batches.
CPU_KV_CACHE_BYTES = 512 * 2**20


class EngineConfig(_Strict):
    kind: Literal["transformers", "vllm"] = "transformers"
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'")
    batch_size: int = Field(default=256, gt=0, description="prompts per generate() call")
    kv_cache_bytes: ByteSize | None = Field(
        default=None,
        gt=0,
        description="vLLM's KV cache in bytes (an integer or e.g. '512MiB', '2GiB'); default: 512 MiB on the CPU, "
        "on GPUs vLLM's own share of GPU memory",
    )


class TrafficConfig(_Strict):
    """The quarter's traffic: simulated (playground / gsm8k problems through the deployed model) or the
    production logs of the quarter (see `ingest`)."""

    source: Literal["simulated", "logs"] = "simulated"
    problems_per_cycle: int = Field(default=3000, gt=0)
    samples_per_problem: int = Field(default=4, gt=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=64, gt=0)


class IngestConfig(_Strict):
    """Production logs read by reasoning_traces when traffic.source is 'logs'."""

    paths: list[str] = Field(
        default_factory=list,
        description="log files, folders (searched for *.jsonl, *.jsonl.gz, *.parquet) or globs; relative to the "
        "working directory. Empty: what `flywheel serve` captured (serving.logs_dir, default the lake's serving_logs)",
    )
    max_record_bytes: int = Field(default=1_000_000, gt=0, description="longer lines are quarantined")
    reasoning_markup: Literal["plain", "think"] = Field(
        default="plain",
        description="how split-off reasoning joins the answer in the trace: 'plain' (reasoning, newline, answer) "
        "or 'think' (<think>reasoning</think>answer)",
    )


class DedupConfig(_Strict):
    near_duplicates: bool = True
    jaccard_threshold: float = Field(default=0.9, ge=0.5, le=0.98, description="MinHash LSH near-duplicate threshold")
    num_perm: int = Field(default=64, ge=16, le=512)
    shingle_tokens: int = Field(default=3, gt=0)


class FilterConfig(_Strict):
    drop_truncated: bool = True
    min_completion_chars: int = Field(default=2, ge=0)
    max_completion_chars: int = Field(default=20_000, gt=0)
    repetition_ngram: int = Field(default=4, gt=0)
    max_repeated_ngram_fraction: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="share of repeated token n-grams in the reasoning above which it is dropped",
    )


class ThresholdConfig(_Strict):
    """A monitor's warn and block levels; null turns a level off."""

    warn: float | None = None
    block: float | None = None


class MonitorConfig(_Strict):
    """Collapse and drift monitors on harvested_traces. `*_min` fire below, the others above."""

    distinct_3_min: ThresholdConfig = ThresholdConfig(warn=0.05, block=0.01)
    near_duplicate_rate_max: ThresholdConfig = ThresholdConfig(warn=0.6, block=0.95)
    answer_diversity_min: ThresholdConfig = ThresholdConfig(warn=0.02, block=None)
    length_ks_max: ThresholdConfig = ThresholdConfig(warn=0.3, block=0.6)
    verified_accuracy_min: ThresholdConfig = ThresholdConfig(warn=0.05, block=None)
    sample_size: int = Field(default=2000, gt=10, description="reasonings sampled for distinct-n and the KS test")


class HarvestConfig(_Strict):
    anchor_fraction: float = Field(
        default=0.5, ge=0, lt=1, description="share of human-origin anchor examples in the training set"
    )
    validation_fraction: float = Field(default=0.05, ge=0, lt=0.5)
    max_positives_per_problem: int = Field(default=4, gt=0)
    min_training_examples: int = Field(
        default=0, ge=0, description="human anchors fill the training set up to this size when positives are scarce"
    )
    redact_names: bool = Field(default=True, description="redact person names (cue- and full-name based)")
    decontamination_ngram: int = Field(default=8, gt=0, description="shared token n-gram with a benchmark prompt")
    dedup: DedupConfig = DedupConfig()
    filters: FilterConfig = FilterConfig()
    reformat: dict[str, float] = Field(
        default_factory=lambda: {"as_is": 1.0},
        description="weights of reformatting strategies: as_is, concise, qa, steps, rephrase (model-based)",
    )
    monitors: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _weights(self) -> HarvestConfig:
        unknown = set(self.reformat) - {"as_is", "concise", "qa", "steps", "rephrase"}
        if unknown:
            raise ValueError(f"harvest.reformat: unknown strategies {sorted(unknown)}")
        if any(w < 0 for w in self.reformat.values()) or sum(self.reformat.values()) <= 0:
            raise ValueError("harvest.reformat: weights must be >= 0 with a positive sum")
        return self


class LoraConfig(_Strict):
    """Train a LoRA adapter (PEFT) instead of all weights."""

    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        default="all-linear", description="'all-linear' or module names such as [q_proj, v_proj]"
    )
    registered_as: Literal["merged", "adapter"] = Field(
        default="merged",
        description="register the candidate as merged full weights, or as the adapter on top of its parent version",
    )


class RediConfig(_Strict):
    """REDI stage 2: the reference-free objective on (positive, negative) pairs, after stage-1 SFT."""

    alpha: float = Field(default=0.8, gt=0, lt=1, description="weight of the negative term (paper: 0.8)")
    learning_rate: float = Field(default=2e-5, gt=0, description="stage 2's (low) learning rate")
    epochs: float = Field(default=1.0, gt=0)


class OnPolicyConfig(_Strict):
    """Sampling during training, for the on-policy methods (opsd, grpo)."""

    samples_per_prompt: int = Field(default=4, ge=2, description="completions sampled per prompt per step")
    max_new_tokens: int | None = Field(default=None, gt=0, description="default: traffic.max_new_tokens")
    temperature: float = Field(default=1.0, gt=0)
    max_prompts: int | None = Field(
        default=None, gt=0, description="train on at most this many of the quarter's prompts (a fixed subset)"
    )


class OpsdConfig(_Strict):
    clip: float | None = Field(
        default=0.05, gt=0, description="cap on each token's KL(teacher || student) term (null: none)"
    )


class GrpoConfig(_Strict):
    beta: float = Field(default=0.0, ge=0, description="KL penalty to the starting model (0: no reference model)")
    format_reward: float = Field(default=0.0, ge=0, description="weight of a reward for stating a final answer")


class TrainingConfig(_Strict):
    """How the candidate is distilled from the champion: one method per cycle."""

    method: Literal["sft", "redi", "opsd", "grpo"] = Field(
        default="sft",
        description="sft: fine-tune on verified positives; redi: sft, then positives vs negatives; opsd: on-policy "
        "self-distillation from the model shown the solution; grpo: RL with the verifier as reward",
    )
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: float = Field(default=3.0, gt=0)
    batch_size: int = Field(default=64, gt=0, description="sequences per optimizer step (opsd/grpo: samples)")
    max_steps: int = Field(default=-1, description="-1: run the epochs")
    seed: int = 0
    checkpoint_every: int = Field(default=50, gt=0, description="steps between checkpoints (a rerun resumes)")
    gpus: int = Field(default=1, ge=0, description="GPUs requested for the training job on Kubernetes")
    lora: LoraConfig | None = Field(default=None, description="null: full fine-tuning")
    redi: RediConfig = RediConfig()
    on_policy: OnPolicyConfig = OnPolicyConfig()
    opsd: OpsdConfig = OpsdConfig()
    grpo: GrpoConfig = GrpoConfig()


class BenchmarkConfig(_Strict):
    """A fixed held-out benchmark: suites (difficulty levels), k samples per problem."""

    problems_per_suite: int = Field(default=150, gt=0)
    samples_per_problem: int = Field(default=4, gt=0)
    temperature: float = Field(default=0.5, ge=0)
    max_new_tokens: int = Field(default=64, gt=0)
    seed: int = 20240101
    bootstrap_resamples: int = Field(default=2000, ge=100)


class GateConfig(_Strict):
    min_improvement: float = Field(
        default=0.0, description="promote only if the overall delta's 95% CI lower bound >= this"
    )
    max_regression: float = Field(default=0.05, ge=0, description="no suite's accuracy may drop by more than this")
    require_approval: bool = Field(
        default=False,
        description="hold a promotion that passed the gate until a named person approves it (flywheel approve)",
    )


class GpuNodesConfig(_Strict):
    """Where GPU steps run on Kubernetes: the GPU limit of inference steps, and the nodes that have GPUs."""

    per_step: int = Field(default=1, ge=0, description="nvidia.com/gpu limit of an inference step's pod")
    node_selector: dict[str, str] = Field(default_factory=dict, description="pod nodeSelector of GPU steps")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="pod tolerations of GPU steps")


class ComputeConfig(_Strict):
    """How steps run. local: in-process / multiprocess executor on this machine. kubernetes: dagster-k8s's
    k8s_job_executor, one pod per step; GPU steps (trace generation, evaluation, training, and rephrasing
    when on) ask for GPUs, select GPU nodes and tolerate their taints; CPU steps ask for none."""

    profile: Literal["local", "kubernetes"] = "local"
    local_executor: Literal["in_process", "multiprocess"] = Field(
        default="in_process",
        description="local profile, runs launched from the UI or the schedule: in_process runs a cycle's steps one "
        "after another in the run's process (a cycle's steps are sequential anyway); multiprocess gives each of "
        "its 17 steps a process of its own, which re-imports torch, transformers and the code location "
        "(on two cores a tiny cycle took 194 s that way against 67 s of step work)",
    )
    gpu: GpuNodesConfig = GpuNodesConfig()


class HealthCheckConfig(_Strict):
    """The check a model passes before the running server switches to it (champion_model, flywheel rollback)."""

    prompts: int = Field(default=8, gt=0, description="verified benchmark prompts, answered greedily")
    min_accuracy: float = Field(
        default=0.75, ge=0, le=1, description="share of them the staged model must answer correctly"
    )


class RequestLimitsConfig(_Strict):
    """What one client request to the gateway may ask for; anything beyond is refused before it reaches vLLM
    (413 for size, 400 otherwise), and the refusal names the field here that set the limit."""

    max_request_bytes: ByteSize = Field(
        default=1024 * 1024, gt=0, description="largest request body (an integer or e.g. '1MiB'); larger: 413"
    )
    max_tokens: int = Field(
        default=4096,
        gt=0,
        description="most tokens one completion may generate (max_tokens, max_completion_tokens); a request "
        "that names neither gets this",
    )
    max_n: int = Field(default=4, gt=0, description="most choices per request (n; best_of on /v1/completions)")
    max_top_logprobs: int = Field(
        default=5, ge=0, description="most log-probabilities per token (top_logprobs; logprobs on /v1/completions)"
    )
    # The served chat template renders the task's prompt format, so the traces fit training. Fields that
    # change the rendering (chat_template, chat_template_kwargs, tools) or constrain decoding (response_format,
    # guided_*, logit_bias) would yield traces that do not, and cost server time: not accepted by default.
    allowed_fields: list[str] = Field(
        default_factory=lambda: [
            "model",
            "messages",
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "n",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "logprobs",
            "top_logprobs",
        ],
        description="the chat-completion fields a client may send (`user` is the gateway's own, see "
        "serving.user_id_from); any other field is refused with 400",
    )

    @model_validator(mode="after")
    def _messages_allowed(self) -> RequestLimitsConfig:
        if "messages" not in self.allowed_fields:
            raise ValueError("serving.limits.allowed_fields must include 'messages' (a chat turn needs it)")
        return self


class ServingConfig(_Strict):
    """`flywheel serve`: vLLM's OpenAI server for the champion behind the trace-capturing gateway."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536, description="the gateway's port (clients use this one)")
    served_model_name: str | None = Field(default=None, description="model name clients see; default: name")
    workload_id: str = Field(default="default", description="recorded on traces without X-Flywheel-Workload")
    logs_dir: str | None = Field(
        default=None, description="where captured traces go; default: the lake's serving_logs folder"
    )
    fsync_interval_s: float = Field(default=1.0, gt=0, description="a machine crash loses at most this window")
    max_unsynced: int = Field(default=1000, gt=0, description="... or at most this many records")
    max_model_len: int | None = Field(default=None, gt=0)
    memory_fraction: float | None = Field(
        default=None, gt=0, le=1, description="vLLM --gpu-memory-utilization on GPUs (ignored on the CPU)"
    )
    kv_cache_bytes: ByteSize | None = Field(
        default=None,
        gt=0,
        description="vLLM --kv-cache-memory-bytes (an integer or e.g. '512MiB'); default: 512 MiB on the CPU, "
        "on GPUs memory_fraction decides",
    )
    enable_lora: bool = Field(default=False, description="start servers with --enable-lora (adapter champions)")
    max_lora_rank: int = Field(default=64, gt=0)
    vllm_args: list[str] = Field(default_factory=list, description="extra `vllm serve` arguments")
    redeploy: bool = Field(
        default=True, description="champion_model switches a running gateway to a newly promoted champion"
    )
    health_check: HealthCheckConfig = HealthCheckConfig()
    user_id_from: Literal["header", "api_key", "body"] = Field(
        default="header",
        description="who a trace is attributed to: 'header' (user_id_header, set by your ingress; clients must "
        "not be able to set it), 'api_key' (the client's key, mapped to a user by api_keys_file; no valid key: "
        "401), or 'body' (the request's unauthenticated `user` field; only for trusted clients)",
    )
    user_id_header: str = Field(
        default="X-Flywheel-User-Id",
        pattern=r"^[A-Za-z0-9-]+$",
        description="the header that names the user when user_id_from is 'header'",
    )
    api_keys_file: str | None = Field(
        default=None,
        description="YAML mapping of client API key (or 'sha256:<hex of the key>') to user id; required by "
        "user_id_from 'api_key', reread when it changes",
    )
    limits: RequestLimitsConfig = RequestLimitsConfig()

    @model_validator(mode="after")
    def _user_id_source(self) -> ServingConfig:
        if self.user_id_from == "api_key" and not self.api_keys_file:
            raise ValueError("serving.user_id_from 'api_key' needs serving.api_keys_file (API key -> user id)")
        if self.api_keys_file and self.user_id_from != "api_key":
            raise ValueError(
                f"serving.api_keys_file is set but serving.user_id_from is {self.user_id_from!r}; "
                "set user_id_from: api_key to use it"
            )
        return self


class ScheduleConfig(_Strict):
    start_date: str = Field(default="2025-01-01", description="the flywheel's first quarter, e.g. '2026-01-01'")

    @field_validator("start_date")
    @classmethod
    def _quarter_start(cls, v: str) -> str:
        if not re.fullmatch(r"\d{4}-(01|04|07|10)-01", v):
            raise ValueError("expected the first day of a quarter as 'YYYY-MM-01' with MM 01, 04, 07 or 10")
        return v


class UiConfig(_Strict):
    """Where the two UIs are served, for the links between them (Dagster metadata -> MLflow runs, model
    versions and audit reports; MLflow tags -> Dagster runs). `make ui` serves both at these defaults."""

    dagster_url: str = Field(default="http://127.0.0.1:3000", pattern=r"^https?://\S+$")
    mlflow_url: str = Field(default="http://127.0.0.1:5000", pattern=r"^https?://\S+$")

    @field_validator("dagster_url", "mlflow_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")


class FlywheelConfig(_Strict):
    """The whole flywheel: one file, one preset, overridable field by field."""

    preset: PresetName = "playground"
    name: str = Field(default="flywheel", pattern=r"^[A-Za-z0-9_.-]+$")
    task: TaskConfig
    model: ModelConfig
    bootstrap: BootstrapConfig = BootstrapConfig()
    engine: EngineConfig = EngineConfig()
    traffic: TrafficConfig = TrafficConfig()
    ingest: IngestConfig = IngestConfig()
    harvest: HarvestConfig = HarvestConfig()
    training: TrainingConfig = TrainingConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    gate: GateConfig = GateConfig()
    compute: ComputeConfig = ComputeConfig()
    serving: ServingConfig = ServingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    ui: UiConfig = UiConfig()

    @model_validator(mode="after")
    def _paths_exist(self) -> FlywheelConfig:
        # Caught here, when the file is read, not a stage later when the asset runs.
        if self.task.data_dir and not Path(self.task.data_dir).expanduser().is_dir():
            raise ValueError(f"task.data_dir: folder {self.task.data_dir!r} does not exist")
        for p in self.ingest.paths:
            if "://" in p:  # object storage: checked when read
                continue
            expanded = os.path.expanduser(p)
            if not (glob.glob(expanded, recursive=True) if glob.has_magic(expanded) else Path(expanded).exists()):
                raise ValueError(
                    f"ingest.paths: {p!r} matches no file or folder (relative paths start from the working "
                    f"directory, {os.getcwd()})"
                )
        return self

    @model_validator(mode="after")
    def _model_fits_task(self) -> FlywheelConfig:
        if self.model.kind == "hf" and not self.model.hf_path:
            raise ValueError("model.hf_path is required when model.kind is 'hf'")
        if self.model.kind == "playground-tiny" and self.task.source != "playground":
            raise ValueError(
                "model.kind 'playground-tiny' only knows the playground alphabet; use task.source 'playground'"
            )
        if self.model.hidden_size % self.model.num_heads:
            raise ValueError("model.hidden_size must be a multiple of model.num_heads")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "playground": {
        "name": "flywheel-playground",
        "task": {"source": "playground"},
        "model": {"kind": "playground-tiny"},
    },
    "smollm2": {
        "name": "flywheel-smollm2",
        "task": {"source": "gsm8k", "prompt_format": "chatml"},
        "model": {"kind": "smollm2-gguf", "max_length": 512},
        "engine": {"batch_size": 16},
        "traffic": {"problems_per_cycle": 8, "samples_per_problem": 2, "max_new_tokens": 160, "temperature": 0.7},
        "harvest": {"anchor_fraction": 0.5, "validation_fraction": 0.0, "min_training_examples": 8},
        "training": {"learning_rate": 1e-5, "epochs": 1, "batch_size": 4},
        "benchmark": {"problems_per_suite": 8, "samples_per_problem": 1, "max_new_tokens": 160, "temperature": 0.0},
        "gate": {"max_regression": 0.25},
    },
    "production": {
        "name": "flywheel",
        "task": {"source": "gsm8k"},
        "model": {"kind": "hf", "hf_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_length": 2048},
        "engine": {"kind": "vllm", "device": "cuda", "batch_size": 512},
        "traffic": {"problems_per_cycle": 5000, "samples_per_problem": 8, "max_new_tokens": 1024},
        "training": {"learning_rate": 1e-5, "epochs": 1, "batch_size": 32},
        "benchmark": {"problems_per_suite": 1319, "samples_per_problem": 4, "max_new_tokens": 1024},
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid flywheel config ({source}):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against flywheel.yaml's documented fields"
        if isinstance(got, dt.date):
            msg += f"; YAML read an unquoted date: quote it, e.g. '{got.isoformat()}'"
        lines.append(f"  - {msg}{got_text}" if where == "<root>" else f"  - {where}: {msg}{got_text}")
    return "\n".join(lines)


def build_config(
    overrides: dict[str, Any] | None = None, preset: str | None = None, source: str = "<overrides>"
) -> FlywheelConfig:
    """Build a config from a preset plus overrides; raises ConfigError naming each bad field."""
    overrides = dict(overrides or {})
    name = preset or overrides.get("preset") or "playground"
    if name not in PRESETS:
        raise ConfigError(
            f"invalid flywheel config ({source}):\n  - preset: expected one of {sorted(PRESETS)} (got {name!r})"
        )
    overrides["preset"] = name
    try:
        return FlywheelConfig.model_validate(_merge(PRESETS[name], overrides))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | os.PathLike[str] | None = None, preset: str | None = None) -> FlywheelConfig:
    """Load a flywheel config: `path`, else $FLYWHEEL_CONFIG, else ./flywheel.yaml, on top of its preset.

    A preset asked for by name (argument or $FLYWHEEL_PRESET) without a file means that preset as it is:
    the implicit ./flywheel.yaml (say, the playground example) is not layered onto another preset.
    """
    path = path or os.environ.get(CONFIG_ENV)
    preset = preset or os.environ.get(PRESET_ENV) or None
    if path is None and preset is None and Path("flywheel.yaml").exists():
        path = "flywheel.yaml"
    if path is None:
        return build_config({}, preset=preset, source=f"preset {preset or 'playground'}")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"flywheel config file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"flywheel config file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"flywheel config file {str(p)!r}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    if preset is not None:
        raw["preset"] = preset
    return build_config(raw, source=str(p))


def flywheel_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The embedded default's state folder: $FLYWHEEL_HOME or ./.flywheel."""
    return Path(home or os.environ.get(HOME_ENV, ".flywheel")).resolve()
