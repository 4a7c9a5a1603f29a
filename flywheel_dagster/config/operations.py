"""The sections of flywheel.yaml that say where and how the flywheel runs: compute, serving (with its
health check and request limits), the schedule and the UIs' addresses."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from flywheel_dagster.config.base import Strict


class GpuNodesConfig(Strict):
    """Where GPU steps run on Kubernetes: the GPU limit of inference steps, and the nodes that have GPUs."""

    per_step: int = Field(default=1, ge=0, description="nvidia.com/gpu limit of an inference step's pod")
    node_selector: dict[str, str] = Field(default_factory=dict, description="pod nodeSelector of GPU steps")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="pod tolerations of GPU steps")


class ComputeConfig(Strict):
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
    engine: Literal["local", "ray"] = Field(
        default="local",
        description="where the harvest stage's per-trace work runs, the log ingest (reasoning_traces, traffic.source "
        "logs) and the harvest (harvested_traces): local (in the step's process) or ray (Ray actors, `ray_workers` "
        "of them; the same rows, labels and quarantine)",
    )
    ray_workers: int = Field(
        default=0, ge=0, description="engine ray: ingest and harvest workers (0: one per CPU Ray sees)"
    )
    ray_address: str = Field(
        default="",
        description="the Ray cluster engine replicas run on (e.g. ray://head:10001, or a KubeRay service); empty: "
        "RAY_ADDRESS, else a local cluster started on first use",
    )


class HealthCheckConfig(Strict):
    """The check a model passes before the running server switches to it (champion_model, flywheel rollback)."""

    prompts: int = Field(default=8, gt=0, description="verified benchmark prompts, answered greedily")
    min_accuracy: float = Field(
        default=0.75, ge=0, le=1, description="share of them the staged model must answer correctly"
    )


class RequestLimitsConfig(Strict):
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


class ServingConfig(Strict):
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


class ScheduleConfig(Strict):
    start_date: str = Field(default="2025-01-01", description="the flywheel's first quarter, e.g. '2026-01-01'")

    @field_validator("start_date")
    @classmethod
    def _quarter_start(cls, v: str) -> str:
        if not re.fullmatch(r"\d{4}-(01|04|07|10)-01", v):
            raise ValueError("expected the first day of a quarter as 'YYYY-MM-01' with MM 01, 04, 07 or 10")
        return v


class UiConfig(Strict):
    """Where the two UIs are served, for the links between them (Dagster metadata -> MLflow runs, model
    versions and audit reports; MLflow tags -> Dagster runs). `make ui` serves both at these defaults."""

    dagster_url: str = Field(default="http://127.0.0.1:3000", pattern=r"^https?://\S+$")
    mlflow_url: str = Field(default="http://127.0.0.1:5000", pattern=r"^https?://\S+$")

    @field_validator("dagster_url", "mlflow_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")
