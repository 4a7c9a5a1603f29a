"""The records the stages hand each other, each with its place in the lake.

A cycle's stages talk through the lake: `deployment` says which model served, `reasoning_traces` and
`harvested_traces` hold the traces, `training_dataset` the rows a method trains on, `candidate_model` what
was trained, `benchmark_report` the comparison and the gate, `approvals` a person's verdict, `champion_model`
the decision. Each JSON record here is a frozen dataclass with its table (the asset that writes it) and file,
`write` and `read`; each table of Parquet files names its files. Table and file names live here and nowhere
else; an asset reads a record, calls the core, and writes a record.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Self

from flywheel_dagster.traces.lake import DATA_FILE
from flywheel_dagster.traces.schema import PAIRS_FILE, PROMPTS_FILE

if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel_dagster.traces.lake import Lake, LakeFile

# The per-cycle tables, in stage order. Each is also the name of the Dagster asset that writes it, except
# ingest_quarantine (written with reasoning_traces) and approvals (written by `flywheel approve`).
DEPLOYMENT = "deployment"
REASONING_TRACES = "reasoning_traces"
INGEST_QUARANTINE = "ingest_quarantine"
HARVESTED_TRACES = "harvested_traces"
TRAINING_DATASET = "training_dataset"
CANDIDATE_MODEL = "candidate_model"
BENCHMARK_REPORT = "benchmark_report"
APPROVALS = "approvals"
CHAMPION_MODEL = "champion_model"
CYCLE_TABLES = (
    DEPLOYMENT,
    REASONING_TRACES,
    INGEST_QUARANTINE,
    HARVESTED_TRACES,
    TRAINING_DATASET,
    CANDIDATE_MODEL,
    BENCHMARK_REPORT,
    APPROVALS,
    CHAMPION_MODEL,
)
# The assets of one cycle that an audit record covers, in stage order (cycle_audit itself is the record).
STAGE_ASSETS = (
    DEPLOYMENT,
    REASONING_TRACES,
    HARVESTED_TRACES,
    TRAINING_DATASET,
    CANDIDATE_MODEL,
    BENCHMARK_REPORT,
    CHAMPION_MODEL,
)
# A model version's benchmark results, one partition per (model version, benchmark) and not per cycle.
EVALUATIONS = "evaluations"
# The audit: the hash chain (one object per entry), and each cycle's record and its HTML page.
AUDIT_CHAIN = "audit_chain"
CYCLE_AUDIT = "cycle_audit"
AUDIT_RECORD_FILE = "audit.json"
AUDIT_REPORT_FILE = "audit.html"
# Beside a cycle's traces: the raw log files it ingested (None for simulated traffic).
SOURCES_FILE = "sources.json"
# Beside a cycle's harvested traces: the loop-health monitors' figures.
MONITORS_FILE = "monitors.json"


class StageRecordError(ValueError):
    """A stage record in the lake that is not what its reader expects; the message names the file and field."""


@dataclass(frozen=True)
class StageRecord:
    """A JSON record, one per cycle, at `<TABLE>/cycle=<cycle>/<FILE>` in the lake."""

    TABLE: ClassVar[str]
    FILE: ClassVar[str]
    cycle: str

    @classmethod
    def where(cls, cycle: str) -> str:
        return f"{cls.TABLE}/cycle={cycle}/{cls.FILE}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "") -> Self:
        """The record from its JSON; a missing field is a StageRecordError naming `where` and the field."""
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise StageRecordError(f"{where}: expected a JSON object ({cls.__name__}), got {type(data).__name__}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise StageRecordError(
                f"{where}: missing {missing}; a {cls.__name__} record has {[f.name for f in fields(cls)]}"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, lake: Lake, beside: dict[str, bytes] | None = None) -> LakeFile:
        """Write the record (and the files `beside` it) as its cycle's partition of TABLE, atomically."""
        content = json.dumps(self.to_json(), indent=2).encode()
        return lake.write_partition(self.TABLE, self.cycle, {self.FILE: content, **(beside or {})})[self.FILE]

    @classmethod
    def read(cls, lake: Lake, cycle: str) -> Self:
        try:
            data = json.loads(lake.read_bytes(cls.TABLE, cycle, cls.FILE))
        except json.JSONDecodeError as err:
            raise StageRecordError(f"{cls.where(cycle)}: not JSON ({err})") from None
        return cls.from_json(data, cls.where(cycle))

    @classmethod
    def find(cls, lake: Lake, cycle: str) -> Self | None:
        """The cycle's record, or None where there is none."""
        return cls.read(lake, cycle) if cls.exists(lake, cycle) else None

    @classmethod
    def exists(cls, lake: Lake, cycle: str) -> bool:
        return lake.exists(cls.TABLE, cycle, cls.FILE)

    @classmethod
    def sha256(cls, lake: Lake, cycle: str) -> str:
        return lake.sha256(cls.TABLE, cycle, cls.FILE)

    @classmethod
    def cycles(cls, lake: Lake) -> list[str]:
        """The cycles that hold this record, oldest first."""
        return [c for c in lake.cycles(cls.TABLE) if lake.exists(cls.TABLE, c, cls.FILE)]


@dataclass(frozen=True)
class Deployment(StageRecord):
    """The champion that served the cycle's traffic, and the alias it was resolved through."""

    TABLE: ClassVar[str] = DEPLOYMENT
    FILE: ClassVar[str] = "deployment.json"
    model_name: str
    version: str
    run_id: str | None
    source: str
    via_alias: str
    weights_sha256: str
    previous_cycle: str | None


@dataclass(frozen=True)
class Candidate(StageRecord):
    """The model the cycle trained: its registry version, parent, method, training job and figures."""

    TABLE: ClassVar[str] = CANDIDATE_MODEL
    FILE: ClassVar[str] = "candidate.json"
    version: str
    run_id: str
    parent_version: str
    weights_sha256: str
    method: str
    adapter: bool
    job_id: str
    steps: int
    train_loss: float
    eval_loss: float | None
    tokens_trained: int
    tokens_generated: int

    TRAINING_FIGURES: ClassVar[tuple[str, ...]] = (
        "steps",
        "train_loss",
        "eval_loss",
        "tokens_trained",
        "tokens_generated",
    )

    def training_figures(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.TRAINING_FIGURES}


@dataclass(frozen=True)
class ModelId:
    name: str
    version: str


@dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict on a benchmark report."""

    promote: bool
    sound: bool  # False: the report itself is unusable (blocks the cycle instead of rejecting the candidate)
    reason: str


@dataclass(frozen=True)
class BenchmarkReport(StageRecord):
    """Candidate against champion per suite (pass@1, paired bootstrap 95% CIs), and the gate's decision."""

    TABLE: ClassVar[str] = BENCHMARK_REPORT
    FILE: ClassVar[str] = "report.json"
    PLOT_FILE: ClassVar[str] = "accuracy.png"
    cycle_index: int
    champion: ModelId
    candidate: ModelId
    suites: list[dict[str, Any]]  # evaluation.stats.SuiteComparison.as_dict(), the last one "overall"
    gate: GateDecision

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "") -> Self:
        flat = super().from_json(data, where)
        try:
            return cls(
                cycle=flat.cycle,
                cycle_index=flat.cycle_index,
                champion=ModelId(**flat.champion),
                candidate=ModelId(**flat.candidate),
                suites=flat.suites,
                gate=GateDecision(**flat.gate),
            )
        except TypeError as err:
            raise StageRecordError(f"{where or cls.__name__}: champion, candidate or gate malformed ({err})") from None

    @property
    def overall(self) -> dict[str, Any] | None:
        """The overall comparison (None in an unsound report that lacks it)."""
        return next((s for s in self.suites if s["suite"] == "overall"), None)


@dataclass(frozen=True)
class ApprovalRecord(StageRecord):
    """A named person's verdict on a candidate, bound to the sha256 of the report they saw."""

    TABLE: ClassVar[str] = APPROVALS
    FILE: ClassVar[str] = "approval.json"
    verdict: str
    by: str
    note: str
    at: str
    candidate_version: str
    champion_version: str
    report_sha256: str


@dataclass(frozen=True)
class ApprovalState:
    """Whether a cycle's promotion may go ahead as far as people are concerned."""

    state: str  # not_required | nothing_to_approve | pending | approved | rejected
    approval: dict | None  # the ApprovalRecord's JSON, when a verdict stands
    reason: str


@dataclass(frozen=True)
class Decision(StageRecord):
    """What champion_model decided: promoted or rejected, why, which version is champion after the cycle,
    the approval it relied on and what happened to the running server."""

    TABLE: ClassVar[str] = CHAMPION_MODEL
    FILE: ClassVar[str] = "decision.json"
    decision: str  # promoted | rejected
    reason: str
    previous_champion: str
    candidate: str
    champion: str
    alias: str
    start_date: str
    approval: dict | None
    serving: dict


def _json_beside(lake: Lake, table: str, cycle: str, name: str) -> dict | None:
    """A JSON file beside a table's data in a cycle's partition, or None where the partition has none."""
    return json.loads(lake.read_bytes(table, cycle, name)) if lake.exists(table, cycle, name) else None


class TraceSet:
    """A cycle's traces as served (reasoning_traces; with log ingestion, SOURCES_FILE lists the raw files)."""

    TABLE = REASONING_TRACES
    DATA = DATA_FILE
    SOURCES = SOURCES_FILE

    @staticmethod
    def sources(lake: Lake, cycle: str) -> dict | None:
        """The manifest of raw log files the cycle ingested; None for simulated traffic."""
        return _json_beside(lake, REASONING_TRACES, cycle, SOURCES_FILE)


class HarvestedSet:
    """Every trace of a cycle with its label (and reason when unused), PII redacted; the monitors' figures."""

    TABLE = HARVESTED_TRACES
    DATA = DATA_FILE
    MONITORS = MONITORS_FILE

    @staticmethod
    def monitors(lake: Lake, cycle: str) -> dict | None:
        """The monitors' figures for the cycle (what the next cycle's drift monitor compares against)."""
        return _json_beside(lake, HARVESTED_TRACES, cycle, MONITORS_FILE)


class TrainingSet:
    """What the methods train on: examples (sft, redi stage 1; train/validation split), positive/negative
    pairs of the same prompt (redi) and the prompts with their solutions (opsd, grpo)."""

    TABLE = TRAINING_DATASET
    EXAMPLES = DATA_FILE
    PAIRS = PAIRS_FILE
    PROMPTS = PROMPTS_FILE
    # Each file and the text columns a person's data can reach (what no_pii scans and erasure filters).
    TEXT_COLUMNS: ClassVar[dict[str, tuple[str, ...]]] = {
        DATA_FILE: ("prompt", "completion"),
        PAIRS_FILE: ("prompt", "chosen", "rejected"),
        PROMPTS_FILE: ("prompt", "solution", "reference"),
    }

    @staticmethod
    def read(lake: Lake, cycle: str, name: str = DATA_FILE) -> pa.Table | None:
        """One of the set's files; None for the pairs or prompts of a partition written before they existed."""
        if name != DATA_FILE and not lake.exists(TRAINING_DATASET, cycle, name):
            return None
        return lake.read_table(TRAINING_DATASET, cycle, name)

    @staticmethod
    def sha256(lake: Lake, cycle: str) -> str:
        return lake.sha256(TRAINING_DATASET, cycle)

    @staticmethod
    def uri(lake: Lake, cycle: str) -> str:
        return lake.uri(TRAINING_DATASET, cycle)


def stale_report(report: BenchmarkReport, deployed: str | None, candidate: str | None) -> str | None:
    """Why the cycle's benchmark report no longer describes its models, or None: `deployed` and `candidate`, the
    versions the cycle's deployment and candidate_model records name now (None where there is no record). A
    step run again after the report (a candidate trained anew, a deployment resolved anew) leaves a report
    about other models: promoting from it, or auditing with it, would pair one model's figures with another's
    training data."""
    cycle = report.cycle
    for step, now, then in (
        ("candidate_model", candidate, report.candidate.version),
        ("deployment", deployed, report.champion.version),
    ):
        if now is not None and now != then:
            return (
                f"cycle {cycle}: benchmark_report compared candidate v{report.candidate.version} with champion "
                f"v{report.champion.version}, but {step} names v{now} now (it ran again after the report); "
                "materialize benchmark_report again (and champion_model after it)"
            )
    return None


def evaluation_prefix(name: str, version: str, run_id: str | None) -> str:
    """How a model version's benchmark evaluations are named in the lake (EVALUATIONS; the benchmark's
    fingerprint follows): its name, version and the run that registered it. A registry made again (a new
    MLflow store beside a kept lake) numbers its versions from 1 again; the run tells its v3 from the old one,
    whose cached evaluation it would otherwise have been judged by."""
    return f"{name}-v{version}-{(run_id or 'norun')[:12]}-"
