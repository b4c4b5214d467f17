"""`plait eval report`: accuracy against generated tokens per question, every strategy on one chart per task."""

from __future__ import annotations

import json
from typing import Sequence


def plot_report(paths: Sequence[str], out: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plait eval report needs matplotlib: pip install 'plait[plots]'") from None
    results = []
    for path in paths:
        with open(path) as f:
            results.append(json.load(f))
    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in results if r["task"] == task):
            for row in r["rows"]:
                x, y = row["tokens_per_question"], row["accuracy"]
                err = [[y - row["ci_low"]], [row["ci_high"] - y]]
                marker = "s" if row["strategy"] in ("greedy", "one sample") else "o"
                ax.errorbar([x], [y], yerr=err, fmt=marker, capsize=3, label=row["strategy"])
                ax.annotate(row["strategy"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per question (log)")
        ax.set_ylabel("accuracy (95% bootstrap CI)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out
