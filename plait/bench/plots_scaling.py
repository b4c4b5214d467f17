"""Line plots of how a measure scales with one setting, for `plait bench report` (plait.bench.plots):

- serve_sweep-<file>.png: one `bench serve --concurrency 1,8,32` run: output tok/s, p99 TTFT and p99 TPOT vs
  max concurrency, one line per system (the --base-url server and its baseline, measured in the same run);
- shared_prefix.png: `bench offline --workload shared-prefix` runs at different --prefix-len: wall time and the
  prompt tokens actually prefilled vs prefix length, plait with and without its prefix cache.

Repeated measurements at one x are drawn as their median with a min-max error bar. matplotlib is imported lazily
(Agg backend) by `pyplot()`, which plait.bench.plots uses too.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from plait.bench.report import median
from plait.bench.results import (prefix_caching, serve_concurrency, serve_entries, serve_systems,
                                 shared_prefix_config)

SWEEP_PANELS = (("output_throughput", "output tok/s"), ("p99_ttft_ms", "p99 TTFT (ms)"),
                ("p99_tpot_ms", "p99 TPOT (ms)"))


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); ImportError naming the extra when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib, an optional extra: pip install 'plait[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line(ax: Any, points: dict[int, list[float]], label: str) -> None:
    """x -> measured values: a line through the medians, min-max bars where a point was measured more than once."""
    xs = sorted(x for x, ys in points.items() if ys)
    mids = [median(points[x]) for x in xs]
    err = [[m - min(points[x]) for x, m in zip(xs, mids)], [max(points[x]) - m for x, m in zip(xs, mids)]]
    ax.errorbar(xs, mids, yerr=err if any(map(any, err)) else None, marker="o", capsize=3, label=label)


def _x_axis(ax: Any, xs: list[int], label: str) -> None:
    xs = sorted(set(xs))
    if xs and xs[-1] / max(1, xs[0]) >= 8:  # 1, 8, 32...: a log axis keeps the small values readable
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel(label)
    ax.grid(True, alpha=0.3)


# ------------------------------------------------------------------------------------ serve concurrency


def is_serve_sweep(result: dict[str, Any]) -> bool:
    """A serve result measured at two or more concurrencies (bench serve --concurrency A,B,...)."""
    return result.get("benchmark") == "serve" and isinstance(result.get("results"), list) and len(
        {serve_concurrency(e) for e in serve_entries(result)}) >= 2


def serve_sweep_series(result: dict[str, Any], metric: str) -> dict[str, dict[int, list[float]]]:
    """system -> concurrency -> the metric's value in each repeat (the run's own value when it was not repeated)."""
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for entry in serve_entries(result):
        conc = serve_concurrency(entry)
        if not conc:
            continue
        for name, data in serve_systems(entry):
            runs = data.get("runs") if isinstance(data.get("runs"), list) and data["runs"] else [data]
            series[name][conc] += [run[metric] for run in runs if isinstance(run.get(metric), (int, float))]
    return {name: dict(points) for name, points in series.items() if any(points.values())}


def plot_serve_sweep(result: dict[str, Any], path: Path) -> bool:
    """Output tok/s, p99 TTFT and p99 TPOT vs max concurrency for one serve sweep, one line per system."""
    if not is_serve_sweep(result):
        return False
    panels = [(metric, label, serve_sweep_series(result, metric)) for metric, label in SWEEP_PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (_, label, series) in zip(axes[0], panels):
        for name, points in series.items():  # the --base-url server first, then its baselines
            _line(ax, points, name)
        _x_axis(ax, [x for points in series.values() for x in points], "max concurrency")
        ax.set_ylabel(label + " (median; bars: min-max)")
        ax.set_title(label)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    w = result.get("workload") or {}
    fig.suptitle(f"{result.get('_file', '')}: {w.get('description') or w.get('name') or ''}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -------------------------------------------------------------------------------------- shared prefix


def prefix_len_series(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """{"wall_s" | "prefill_tokens": series label -> prefix length -> plait's value in each run} over the
    shared-prefix offline results. A series is plait with or without its prefix cache; the workload's other
    dimensions are added to the label when the results hold more than one shape, so unlike runs never share a
    line."""
    points: dict[tuple[bool, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for r in results:
        shape = shared_prefix_config(r) if r.get("benchmark") == "offline" else None
        runs = (r.get("plait") or {}).get("runs") if shape else None
        if not runs:
            continue
        out_len = (r.get("config") or {}).get("output_len")
        key = (prefix_caching(r), f"{shape.get('num_groups')}x{shape.get('prompts_per_group')}, "
                                  f"Q{shape.get('question_len')}, out {out_len}")
        points[key] += [(int(shape["prefix_len"]), run) for run in runs if isinstance(run, dict)]
    several_shapes = len({shape for _, shape in points}) > 1
    series: dict[str, dict[str, dict[int, list[float]]]] = {"wall_s": {}, "prefill_tokens": {}}
    for (caching, shape), runs in sorted(points.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        label = f"plait, prefix cache {'on' if caching else 'off'}" + (f" ({shape})" if several_shapes else "")
        for metric, by_metric in series.items():
            by_x: dict[int, list[float]] = defaultdict(list)
            for x, run in runs:
                if isinstance(run.get(metric), (int, float)):
                    by_x[x].append(run[metric])
            if by_x:
                by_metric[label] = dict(by_x)
    return {metric: s for metric, s in series.items() if s}


def plot_prefix_len(results: list[dict[str, Any]], path: Path) -> bool:
    """Wall time and prefilled prompt tokens vs shared-prefix length, plait with / without its prefix cache."""
    series = prefix_len_series(results)
    if "wall_s" not in series:
        return False
    panels = [("wall_s", "wall time (s)"), ("prefill_tokens", "prompt tokens prefilled")]
    panels = [(metric, label) for metric, label in panels if metric in series]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.5), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        for name, points in series[metric].items():
            _line(ax, points, name)
        _x_axis(ax, [x for points in series[metric].values() for x in points], "shared prefix length (tokens)")
        ax.set_ylabel(label + (" (median; bars: min-max)" if metric == "wall_s" else ""))
        ax.set_title(f"shared prefix: {label}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
