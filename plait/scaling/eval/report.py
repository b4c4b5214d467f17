"""`plait eval report`: accuracy against generated tokens per question, every strategy on one chart per task.

Each strategy gets its own colour and marker, named in a legend beside its chart (text next to the points
overlapped where strategies spend similar tokens); baselines (greedy, one sample) are squares. A strategy that
appears in several result files of one task keeps one style and one legend entry.
"""

from __future__ import annotations

import json
from typing import Sequence

BASELINES = ("greedy", "one sample")
MARKERS = "o^vD<>pP*Xh"


def plot_report(paths: Sequence[str], out: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plait eval report needs matplotlib: pip install matplotlib "
                         "(or the optional extra 'plait[bench]')") from None
    results = []
    for path in paths:
        with open(path) as f:
            results.append(json.load(f))
    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(9 * len(tasks), 4.5), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, task in zip(axes[0], tasks):
        rows = [row for r in results if r["task"] == task for row in r["rows"]]
        names = list(dict.fromkeys(row["strategy"] for row in rows))
        labelled = set()
        for row in rows:
            name = row["strategy"]
            i = names.index(name)
            x, y = row["tokens_per_question"], row["accuracy"]
            err = [[y - row["ci_low"]], [row["ci_high"] - y]]
            marker = "s" if name in BASELINES else MARKERS[i % len(MARKERS)]
            ax.errorbar([x], [y], yerr=err, fmt=marker, color=colors[i % len(colors)], capsize=3, alpha=0.85,
                        label=None if name in labelled else name)
            labelled.add(name)
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per question (log)")
        ax.set_ylabel("accuracy (95% bootstrap CI)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  ncol=1 if len(names) <= 16 else 2, title="strategy", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
