"""Where the flywheel stands: one row per audited cycle (accuracy with CIs, delta, decision, method, trace
counts, audit entry), read from the audit chain. Shown on cycle_audit in the Dagster UI and by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel_dagster.evaluation.fmt import with_ci
from flywheel_dagster.evaluation.stats import SuiteComparison
from flywheel_dagster.records import REASONING_TRACES, TRAINING_DATASET


@dataclass(frozen=True)
class CycleRow:
    cycle: str
    champion: str
    candidate: str
    overall: SuiteComparison  # held-out pass@1 of both, the delta, their 95% CIs
    decision: str
    method: str
    traces: int | None
    training_examples: int | None
    audit_seq: int
    checks_failed: tuple[str, ...]

    def line(self) -> str:
        """The cycle in one sentence."""
        o = self.overall
        failed = f"; checks failed: {', '.join(self.checks_failed)}" if self.checks_failed else ""
        return (
            f"{self.cycle}: candidate v{self.candidate} {o.candidate:.3f} against champion "
            f"v{self.champion} {o.champion:.3f}, delta {with_ci(o.delta, o.delta_ci, signed=True)}: "
            f"{self.decision} ({self.method}; {_n(self.traces)} traces, {_n(self.training_examples)} training "
            f"examples; audit entry #{self.audit_seq}{failed})"
        )


def _n(v: int | None) -> str:
    return "?" if v is None else f"{v:,}"


def cycle_row(record: dict) -> CycleRow:
    """One audit record (a `kind: cycle` entry of the chain) as an overview row."""
    overall = next(s for s in record["benchmark"]["suites"] if s["suite"] == "overall")
    counts = {name: a.get("counts", {}) for name, a in record["assets"].items()}
    return CycleRow(
        cycle=record["cycle"],
        champion=str(record["decision"]["previous_champion"]),
        candidate=str(record["decision"]["candidate"]),
        overall=SuiteComparison(**overall),
        decision=record["decision"]["decision"],
        method=record["training"]["method"],
        traces=counts.get(REASONING_TRACES, {}).get("dagster/row_count"),
        training_examples=counts.get(TRAINING_DATASET, {}).get("dagster/row_count"),
        audit_seq=record["seq"],
        checks_failed=tuple(sorted(n for n, c in record["checks"].items() if c.get("passed") is False)),
    )


def overview_markdown(rows: list[CycleRow]) -> str:
    """Every cycle so far as a Markdown table, oldest first."""
    head = (
        "| cycle | champion | candidate | delta (95% CI) | decision | method | traces | training examples | audit |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r.cycle} | v{r.champion} {with_ci(r.overall.champion, r.overall.champion_ci)} "
        f"| v{r.candidate} {with_ci(r.overall.candidate, r.overall.candidate_ci)} "
        f"| {with_ci(r.overall.delta, r.overall.delta_ci, signed=True)} | {r.decision} | {r.method} "
        f"| {_n(r.traces)} | {_n(r.training_examples)} | #{r.audit_seq} |"
        for r in rows
    )
