"""The lab's figure and table, written to its folder and logged to its MLflow store (experiment `flywheel-lab`)."""

from __future__ import annotations

from pathlib import Path

from flywheel_dagster.config import build_config
from flywheel_dagster.lab.analysis import DROP, outcome, serving_curve
from flywheel_dagster.lab.runner import Lab

FIGURE = "lab.png"
TABLE = "lab.md"


def table(lab: Lab) -> str:
    """One row per arm: serving accuracy after each cycle, the monitors' first warning, the first drop, the verdict."""
    levels = build_config(lab.base, source="lab base").harvest.monitors
    head = " | ".join(f"c{k}" for k in range(lab.cycles + 1))
    lines = [
        f"| arm | {head} | last [95% CI] | first warning | first drop (> {DROP * 100:.0f} pts, CI below) | monitors | "
        "tokens trained | wall s |",
        "|---|" + "---|" * (lab.cycles + 1) + "---|---|---|---|---|---|",
    ]
    for arm in lab.arms:
        rows = lab.finished(arm.name)
        curve = serving_curve(rows)
        accs = [f"{p.accuracy:.3f}" for p in curve] + ["-"] * (lab.cycles + 1 - len(curve))
        last = f"{curve[-1].accuracy:.3f} [{curve[-1].ci[0]:.3f}, {curve[-1].ci[1]:.3f}]" if curve else "-"
        o = outcome(rows, levels)
        warning = f"c{o.first_warning} ({', '.join(o.warned_by)})" if o.first_warning is not None else "-"
        dropped = f"c{o.first_drop}" if o.first_drop is not None else "-"
        lines.append(
            f"| {arm.name} | {' | '.join(accs)} | {last} | {warning} | {dropped} | {o.verdict} | "
            f"{sum(r['tokens_trained'] for r in rows):,} | {sum(r['seconds'] for r in rows):.0f} |"
        )
    return "\n".join(lines) + "\n"


def figure(lab: Lab, path: Path) -> Path:
    """Serving accuracy per cycle with its 95% CI band per arm; a triangle where the monitors first warned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = build_config(lab.base, source="lab base").harvest.monitors
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for arm in lab.arms:
        rows = lab.finished(arm.name)
        curve = serving_curve(rows)
        if not curve:
            continue
        xs = [p.cycle for p in curve]
        (line,) = ax.plot(xs, [p.accuracy for p in curve], marker="o", ms=3, label=arm.name)
        ax.fill_between(xs, [p.ci[0] for p in curve], [p.ci[1] for p in curve], color=line.get_color(), alpha=0.12)
        o = outcome(rows, levels)
        if o.first_warning is not None:
            at = next(p for p in curve if p.cycle == o.first_warning)
            ax.plot([at.cycle], [at.accuracy], marker="v", ms=10, color=line.get_color(), mec="black")
    ax.set_xlabel("cycle (0: the base model)")
    ax.set_ylabel("held-out pass@1 of the serving model (95% CI)")
    ax.set_title("flywheel lab: accuracy per cycle; triangle: monitors' first warning")
    ax.set_xticks(range(lab.cycles + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write(lab: Lab) -> tuple[Path, Path]:
    """lab.md and lab.png in the lab's folder, both logged as artifacts (with each arm's accuracy per cycle as
    metrics) to the lab's MLflow store."""
    from flywheel_dagster.registry import Registry

    md = lab.folder / TABLE
    md.write_text(table(lab))
    png = figure(lab, lab.folder / FIGURE)
    registry = Registry(f"sqlite:///{lab.folder / 'mlflow.db'}", "flywheel-lab", (lab.folder / "mlartifacts").as_uri())
    with registry.stage("lab", 0, "lab") as run_id:
        for arm in lab.arms:
            for p in serving_curve(lab.finished(arm.name)):
                registry.log_metrics(run_id, {f"{arm.name}/accuracy": p.accuracy}, step=p.cycle)
        registry.log_artifact(run_id, str(md))
        registry.log_artifact(run_id, str(png))
    return md, png
