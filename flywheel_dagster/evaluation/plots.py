"""The accuracy-per-cycle chart attached to benchmark_report."""

from __future__ import annotations

import io


def accuracy_trend_png(reports: list[dict]) -> bytes:
    """Overall pass@1 of champion and candidate per cycle, with 95% CIs, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = [r["cycle"] for r in reports]
    overall = [next(s for s in r["suites"] if s["suite"] == "overall") for r in reports]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for label, acc_key, ci_key, offset in (
        ("champion", "champion", "champion_ci", -0.08),
        ("candidate", "candidate", "candidate_ci", 0.08),
    ):
        ys = [o[acc_key] for o in overall]
        err = [
            [y - o[ci_key][0] for y, o in zip(ys, overall, strict=True)],
            [o[ci_key][1] - y for y, o in zip(ys, overall, strict=True)],
        ]
        ax.errorbar([i + offset for i in range(len(cycles))], ys, yerr=err, fmt="o-", capsize=3, label=label)
    for i, r in enumerate(reports):
        if r["gate"]["promote"]:
            ax.annotate(
                "promoted",
                (i, overall[i]["candidate"]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=7,
            )
    ax.set_xticks(range(len(cycles)), cycles, fontsize=8)
    ax.set_ylabel("held-out pass@1")
    ax.set_title("Benchmark accuracy per cycle (95% CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
