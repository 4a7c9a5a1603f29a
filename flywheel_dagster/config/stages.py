"""The sections of flywheel.yaml that shape a cycle: the task, the base model, inference, traffic, ingest,
harvesting, training, the benchmark and the promotion gate."""

from __future__ import annotations

from typing import Literal

from pydantic import ByteSize, Field, model_validator

from flywheel_dagster.config.base import Strict


class TaskConfig(Strict):
    """Where problems come from and how answers are verified."""

    source: Literal["playground", "gsm8k", "arithmetic"] = Field(
        description="playground: arithmetic for the tiny character model; gsm8k: word problems from data/gsm8k; "
        "arithmetic: the same arithmetic asked in words, for a pretrained chat model (SmolLM2)"
    )
    seed: int = 0
    data_dir: str | None = Field(
        default=None, description="GSM8K folder with train.jsonl/test.jsonl; default: the repo's data/gsm8k"
    )
    prompt_format: Literal["plain", "chatml"] = Field(
        default="plain", description="chatml wraps GSM8K questions in ChatML turns (instruct models like SmolLM2)"
    )


class ModelConfig(Strict):
    """The cycle-0 base model."""

    kind: Literal["playground-tiny", "smollm2-gguf", "hf"]
    hf_path: str | None = Field(default=None, description="HF model id or folder, for kind 'hf'")
    hidden_size: int = Field(default=128, gt=0)
    num_layers: int = Field(default=3, gt=0)
    num_heads: int = Field(default=4, gt=0)
    intermediate_size: int = Field(default=384, gt=0)
    max_length: int = Field(default=128, gt=8, description="prompt + completion tokens")


class BootstrapConfig(Strict):
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


class EngineConfig(Strict):
    kind: Literal["transformers", "vllm"] = "transformers"
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'")
    batch_size: int = Field(default=256, gt=0, description="prompts per generate() call")
    kv_cache_bytes: ByteSize | None = Field(
        default=None,
        gt=0,
        description="vLLM's KV cache in bytes (an integer or e.g. '512MiB', '2GiB'); default: 512 MiB on the CPU, "
        "on GPUs vLLM's own share of GPU memory",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description="engine replicas generating data-parallel (Ray actors; one per GPU, or per tensor_parallel "
        "GPUs); the traces are the same for any number of replicas from 2 up (shards of shard_prompts, a seed each); "
        "1 runs the engine in this process, unsharded, and samples other traces",
    )
    shard_prompts: int = Field(
        default=256, gt=0, description="with replicas > 1: prompts per unit of work, each sampled with its own seed"
    )
    tensor_parallel: int = Field(default=1, ge=1, description="vLLM: GPUs one model is split over")
    cpus_per_replica: float = Field(
        default=1, gt=0, description="with replicas > 1: CPUs each replica holds (on the CPU, its torch threads)"
    )

    @model_validator(mode="after")
    def _tensor_parallel_needs_vllm(self) -> EngineConfig:
        if self.tensor_parallel > 1 and self.kind != "vllm":
            raise ValueError(
                f"engine.tensor_parallel {self.tensor_parallel} needs engine.kind 'vllm' (the transformers engine "
                "holds a model on one device)"
            )
        return self


class TrafficConfig(Strict):
    """The quarter's traffic: simulated (playground / gsm8k problems through the deployed model) or the
    production logs of the quarter (see `ingest`)."""

    source: Literal["simulated", "logs"] = "simulated"
    problems_per_cycle: int = Field(default=3000, gt=0)
    samples_per_problem: int = Field(default=4, gt=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=64, gt=0)


class IngestConfig(Strict):
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


class DedupConfig(Strict):
    exact: bool = Field(default=True, description="drop exact duplicates (normalized prompt + completion)")
    near_duplicates: bool = True
    jaccard_threshold: float = Field(default=0.9, ge=0.5, le=0.98, description="MinHash LSH near-duplicate threshold")
    num_perm: int = Field(default=64, ge=16, le=512)
    shingle_tokens: int = Field(default=3, gt=0)
    state_memory_mb: int = Field(
        default=64,
        ge=16,
        description="memory for the quarter's dedup keys, LSH bands and per-problem counts; past it the oldest "
        "spill to disk (state_spill_dir), so a quarter of any size harvests in bounded memory",
    )
    state_spill_dir: str | None = Field(
        default=None, description="where that state spills (a temporary folder, removed after); null: the system's"
    )


class FilterConfig(Strict):
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


class ThresholdConfig(Strict):
    """A monitor's warn and block levels; null turns a level off."""

    warn: float | None = None
    block: float | None = None


class MonitorConfig(Strict):
    """Collapse and drift monitors on harvested_traces. `*_min` fire below, the others above."""

    distinct_3_min: ThresholdConfig = ThresholdConfig(warn=0.05, block=0.01)
    near_duplicate_rate_max: ThresholdConfig = ThresholdConfig(warn=0.6, block=0.95)
    answer_diversity_min: ThresholdConfig = ThresholdConfig(warn=0.02, block=None)
    length_ks_max: ThresholdConfig = ThresholdConfig(warn=0.3, block=0.6)
    verified_accuracy_min: ThresholdConfig = ThresholdConfig(warn=0.05, block=None)
    verified_accuracy_drop_max: ThresholdConfig = Field(
        default=ThresholdConfig(warn=0.03, block=None),
        description="verified accuracy this far below its best in earlier quarters (calibrated in docs/lab.md: "
        "warned in time for the self-consuming loop's collapse, never on the healthy arms)",
    )
    sample_size: int = Field(default=2000, gt=10, description="reasonings sampled for distinct-n and the KS test")


class HarvestConfig(Strict):
    anchor_fraction: float = Field(
        default=0.5, ge=0, lt=1, description="share of human-origin anchor examples in the training set"
    )
    validation_fraction: float = Field(default=0.05, ge=0, lt=0.5)
    max_positives_per_problem: int = Field(default=4, gt=0)
    max_training_prompts: int = Field(
        default=50_000,
        gt=0,
        description="distinct prompts the training set takes traces from, at most: past that a uniform sample of "
        "them (the smallest digests), each with all its positives, pairs and on-policy prompt; bounds the "
        "training_dataset step's memory whatever the quarter's size",
    )
    min_training_examples: int = Field(
        default=0, ge=0, description="human anchors fill the training set up to this size when positives are scarce"
    )
    redact_names: bool = Field(default=True, description="redact person names (cue- and full-name based)")
    verify: bool = Field(
        default=True,
        description="label traces by the verifier; false (an experiment, `flywheel lab`'s no_verification arm): "
        "every kept trace is a positive, correct or not",
    )
    synthetic: bool = Field(
        default=True,
        description="train on the harvested positives; false (the lab's anchors_only control): as many human "
        "anchors as the mix would have had examples, and no traces",
    )
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


class LoraConfig(Strict):
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


class RediConfig(Strict):
    """REDI stage 2: the reference-free objective on (positive, negative) pairs, after stage-1 SFT."""

    alpha: float = Field(default=0.8, gt=0, lt=1, description="weight of the negative term (paper: 0.8)")
    learning_rate: float = Field(default=2e-5, gt=0, description="stage 2's (low) learning rate")
    epochs: float = Field(default=1.0, gt=0)


class OnPolicyConfig(Strict):
    """Sampling during training, for the on-policy methods (opsd, grpo)."""

    samples_per_prompt: int = Field(default=4, ge=2, description="completions sampled per prompt per step")
    max_new_tokens: int | None = Field(default=None, gt=0, description="default: traffic.max_new_tokens")
    temperature: float = Field(default=1.0, gt=0)
    max_prompts: int | None = Field(
        default=None, gt=0, description="train on at most this many of the quarter's prompts (a fixed subset)"
    )
    prompts: Literal["all", "mixed"] = Field(
        default="all",
        description=(
            "mixed: only the prompts the champion both solved and failed in the quarter's traffic, where a "
            "group of samples is likely to disagree (GRPO's advantage is zero on a group that agrees)"
        ),
    )


class OpsdConfig(Strict):
    clip: float | None = Field(
        default=0.05, gt=0, description="cap on each token's KL(teacher || student) term (null: none)"
    )


class GrpoConfig(Strict):
    beta: float = Field(default=0.0, ge=0, description="KL penalty to the starting model (0: no reference model)")
    format_reward: float = Field(default=0.0, ge=0, description="weight of a reward for stating a final answer")


class TrainingConfig(Strict):
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
    processes: int = Field(
        default=1,
        ge=1,
        description="processes the job trains in, data-parallel (torchrun; one per GPU, so usually = gpus); "
        "batch_size stays the global batch and must divide among them",
    )
    sharding: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="with processes > 1: ddp (a full copy of the model per process) or fsdp (weights, gradients "
        "and optimizer state sharded across the processes, for a model that does not fit one GPU)",
    )
    lora: LoraConfig | None = Field(default=None, description="null: full fine-tuning")
    redi: RediConfig = RediConfig()
    on_policy: OnPolicyConfig = OnPolicyConfig()
    opsd: OpsdConfig = OpsdConfig()
    grpo: GrpoConfig = GrpoConfig()

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainingConfig:
        if self.sharding == "fsdp" and self.lora is not None:
            raise ValueError("training.sharding fsdp with training.lora: shard full fine-tuning only (LoRA fits DDP)")
        if self.batch_size % self.processes:
            raise ValueError(
                f"training.batch_size {self.batch_size} does not divide among training.processes {self.processes}: "
                "the global batch is split evenly, so make it a multiple of the processes"
            )
        return self


class BenchmarkConfig(Strict):
    """A fixed held-out benchmark: suites (difficulty levels), k samples per problem."""

    problems_per_suite: int = Field(default=150, gt=0)
    samples_per_problem: int = Field(default=4, gt=0)
    temperature: float = Field(default=0.5, ge=0)
    max_new_tokens: int = Field(default=64, gt=0)
    seed: int = 20240101
    bootstrap_resamples: int = Field(default=2000, ge=100)


class GateConfig(Strict):
    min_improvement: float = Field(
        default=0.0, description="promote only if the overall delta's 95% CI lower bound >= this"
    )
    max_regression: float = Field(default=0.05, ge=0, description="no suite's accuracy may drop by more than this")
    always_promote: bool = Field(
        default=False,
        description="promote every candidate with a complete report, better or not: for experiments that study the "
        "loop's own dynamics (`flywheel lab`'s collapse arms), never for a model that serves",
    )
    require_approval: bool = Field(
        default=False,
        description="hold a promotion that passed the gate until a named person approves it (flywheel approve)",
    )
