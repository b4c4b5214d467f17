"""`plait bench report RESULTS_DIR`: one markdown summary and PNG plots from the benchmarks' saved JSON.

Reads every `*.json` directly in RESULTS_DIR (not sub-folders: a sweep keeps its per-point runs in one) that a
plait benchmark wrote (`offline`, `latency`, `serve`, `sweep`, `roofline`), and writes RESULTS_DIR/REPORT.md with
tables plus, when matplotlib is installed, PNGs next to it:

- throughput_vs_concurrency.png: serve output tok/s vs max concurrency, and offline output tok/s vs
  max_num_seqs (HF: its batch size), one line per engine (and workload, when several);
- serve_latency.png: TTFT / TPOT / ITL / E2E p50, p90, p99 of each serve run;
- offline_throughput.png: output tok/s per engine for each offline run;
- shared_prefix.png: wall time and prefilled tokens vs --prefix-len of the offline shared-prefix runs, plait with
  and without its prefix cache (plait.bench.plots_scaling);
- serve_sweep-<name>.png: output tok/s, p99 TTFT and p99 TPOT vs concurrency of each `bench serve --concurrency
  A,B,...` run, one line per system (plait.bench.plots_scaling);
- sweep-<name>.png: a heat map (two swept settings) or a line (one) of each sweep.

Tables get goodput and peak-RSS columns when some result has them. Reading the JSON (both serve formats) is
plait.bench.results.

A plot whose data is missing is skipped and the report says so. matplotlib is imported here only, lazily, with
the Agg backend, so `import plait` never pays for it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from plait.bench.plots_scaling import is_serve_sweep, plot_prefix_len, plot_serve_sweep, pyplot
from plait.bench.report import fmt, median
from plait.bench.results import (engines_of, load_results, offline_parallelism, offline_peak_rss_mib, offline_shape,
                                 offline_workload, result_dtype, serve_percentile, serve_ratios, serve_runs,
                                 serve_workload)

SERVE_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))
PERCENTILES = ("p50", "p90", "p99")


# ------------------------------------------------------------------------------------------- tables


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers formatted like the terminal tables, None as '-'."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        return fmt(v).replace("|", "\\|")

    def numeric(i: int) -> bool:
        values = [row[i] for row in rows if row[i] is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    aligns = ["---:" if i and numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


OFFLINE_HEADERS = ["file", "engine", "workload", "seqs at once", "dtype", "runs", "output tok/s", "total tok/s",
                   "wall s", "plait / engine", "peak RSS MiB"]
SERVE_HEADERS = ["file", "engine", "workload", "max concurrency", "ok/failed", "req/s", "output tok/s", "total tok/s",
                 "goodput req/s", "goodput SLOs", "peak RSS MiB", "repeats"]
RATIO_HEADERS = ["file", "concurrency", "baseline", "output tok/s", "per pair", "p99 TPOT", "per pair"]
# Columns only some results have (older JSON lacks them): left out of a table when no row has a value.
OPTIONAL_COLUMNS = {"peak RSS MiB", "goodput req/s", "goodput SLOs", "repeats", "per pair"}


def drop_empty_columns(headers: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Leave out the OPTIONAL_COLUMNS no row has a value in, so a report of older results keeps its layout."""
    keep = [i for i, h in enumerate(headers) if h not in OPTIONAL_COLUMNS or any(row[i] is not None for row in rows)]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]


def offline_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per engine per offline result, in OFFLINE_HEADERS order."""
    rows = []
    for r in results:
        if r.get("benchmark") != "offline":
            continue
        plait_tps = ((r.get("plait") or {}).get("median") or {}).get("output_tps")
        for name, data in engines_of(r):
            m = data["median"]
            ratio = plait_tps / m["output_tps"] if name != "plait" and plait_tps and m.get("output_tps") else None
            rows.append([r["_file"], name, offline_workload(r), offline_parallelism(r, name, data),
                         result_dtype(r, data), len(data.get("runs") or []), m.get("output_tps"), m.get("total_tps"),
                         m.get("wall_s"), f"{ratio:.2f}x" if ratio else None, offline_peak_rss_mib(r, name)])
    return rows


def latency_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        if r.get("benchmark") != "latency":
            continue
        cfg = r.get("config") or {}
        for name, data in engines_of(r):
            m = data["median"]
            ttft = m.get("ttft_s")
            rows.append([r["_file"], name, f"{cfg.get('input_len')}/{cfg.get('output_len')}", result_dtype(r, data),
                         (r.get("machine") or {}).get("torch_threads"), ttft * 1000 if ttft is not None else None,
                         m.get("prefill_tps"), m.get("decode_tps"), m.get("total_s")])
    return rows


def serve_rows(results: list[dict[str, Any]]) -> tuple[list[list[Any]], list[list[Any]]]:
    """(throughput rows in SERVE_HEADERS order, latency-percentile rows) of the serve runs; a repeated run's
    numbers are medians over its repeats."""
    tput, lat = [], []
    for r in serve_runs(results):
        engine, conc = r["_engine"], r["_concurrency"]
        slos = r.get("goodput_slos_ms")
        repeats = len(r["runs"]) if isinstance(r.get("runs"), list) and len(r["runs"]) > 1 else None
        tput.append([r["_file"], engine, serve_workload(r), conc, f"{r.get('completed', 0)}/{r.get('failed', 0)}",
                     r.get("request_throughput"), r.get("output_throughput"), r.get("total_token_throughput"),
                     r.get("request_goodput"),
                     " ".join(f"{k}<={v:g}ms" for k, v in slos.items()) if isinstance(slos, dict) else None,
                     r["_peak_rss_mib"], repeats])
        row = [engine, conc]
        for metric, _ in SERVE_METRICS:
            row += [serve_percentile(r, metric, p) for p in PERCENTILES]
        lat.append(row)
    return tput, lat


def serve_ratio_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """The --base-url server over each baseline measured in the same run: output tok/s (higher is better for the
    server) and p99 TPOT (lower is better), medians, with the per-pair ratios of a repeated run."""

    def x(v: Any) -> str | None:
        return f"{v:.2f}x" if isinstance(v, (int, float)) else None

    def pairs(v: Any) -> str | None:
        if not isinstance(v, list) or len(v) < 2:  # one pair: its ratio is the median already shown
            return None
        return ", ".join(f"{p:.2f}x" if isinstance(p, (int, float)) else "-" for p in v)

    return [[r["file"], r["concurrency"], r["baseline"], x(r.get("output_throughput")),
             pairs(r.get("output_throughput_per_pair")), x(r.get("p99_tpot_ms")), pairs(r.get("p99_tpot_ms_per_pair"))]
            for r in serve_ratios(results)]


def sweep_rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    names = list(result.get("params") or {})
    best = (result.get("best") or {}).get("settings")
    rows = []
    for p in result.get("points") or []:
        s = p.get("settings") or {}
        rows.append([("**best** " if s == best else "") + str(s.get(names[0])) if names else ""]
                    + [s.get(n) for n in names[1:]]
                    + ([p.get("output_tps"), p.get("total_tps"), p.get("wall_s")] if "error" not in p
                       else ["failed", None, None]))
    return names, rows


# --------------------------------------------------------------------------------------------- plots


def plot_throughput_vs_concurrency(results: list[dict[str, Any]], path: Path) -> bool:
    """Serve: output tok/s vs max concurrency; offline: output tok/s vs sequences at once. Per engine (x workload)."""
    panels: dict[str, dict[tuple[str, str], list[tuple[int, float]]]] = {"serve": defaultdict(list),
                                                                          "offline": defaultdict(list)}
    for r in serve_runs(results):
        # a repeated run contributes each repeat, so its spread shows as the error bar
        for run in r["runs"] if isinstance(r.get("runs"), list) and r["runs"] else [r]:
            conc, tps = r["_concurrency"], run.get("output_throughput")
            if conc and tps:
                panels["serve"][(r["_engine"], serve_workload(r))].append((conc, tps))
    for r in results:
        if r.get("benchmark") == "offline":
            for name, data in engines_of(r):
                par, tps = offline_parallelism(r, name, data), data["median"].get("output_tps")
                if par and tps:
                    panels["offline"][(name, offline_shape(r))].append((par, tps))
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    titles = {"serve": ("serving: output tok/s vs max concurrency", "max concurrency"),
              "offline": ("offline: output tok/s vs sequences at once", "max_num_seqs / batch size")}
    for ax, (kind, series) in zip(axes[0], panels.items()):
        several_workloads = len({w for _, w in series}) > 1
        all_x = sorted({x for pts in series.values() for x, _ in pts})
        for (engine, workload), points in sorted(series.items()):
            by_x: dict[int, list[float]] = defaultdict(list)
            for x, y in points:
                by_x[x].append(y)
            xs = sorted(by_x)  # repeated runs at one x: their median, with the spread as an error bar
            ys = [median(by_x[x]) for x in xs]
            err = [[y - min(by_x[x]) for x, y in zip(xs, ys)], [max(by_x[x]) - y for x, y in zip(xs, ys)]]
            ax.errorbar(xs, ys, yerr=err if any(map(any, err)) else None, marker="o", capsize=3,
                        label=f"{engine} ({workload})" if several_workloads else engine)
        title, xlabel = titles[kind]
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("output tok/s (median; bars: min-max)")
        ax.set_ylim(bottom=0)
        if all_x[-1] / max(1, all_x[0]) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(all_x)
        ax.set_xticklabels([str(x) for x in all_x])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_serve_latency(results: list[dict[str, Any]], path: Path) -> bool:
    """One panel per metric (TTFT, TPOT, ITL, E2E); per serve run, bars for p50, p90, p99 (ms)."""
    runs = [r for r in serve_runs(results)
            if any(serve_percentile(r, m, p) is not None for m, _ in SERVE_METRICS for p in PERCENTILES)]
    if not runs:
        return False
    plt = pyplot()
    labels = [f"{r['_engine']}\nc={r['_concurrency']}" for r in runs]
    fig, axes = plt.subplots(1, len(SERVE_METRICS), figsize=(max(12, 1.2 * len(runs) * 4), 4.5), squeeze=False)
    width = 0.8 / len(PERCENTILES)
    for ax, (metric, title) in zip(axes[0], SERVE_METRICS):
        for j, p in enumerate(PERCENTILES):
            values = [serve_percentile(r, metric, p) for r in runs]
            xs = [i + (j - (len(PERCENTILES) - 1) / 2) * width for i in range(len(runs))]
            ax.bar(xs, [v if v is not None else 0 for v in values], width, label=p)
        ax.set_title(f"{title} (ms)")
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(labels, fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_offline_throughput(results: list[dict[str, Any]], path: Path) -> bool:
    """Grouped bars: one group per offline run, one bar per engine (median output tok/s)."""
    runs = [r for r in results if r.get("benchmark") == "offline" and engines_of(r)]
    if not runs:
        return False
    engines = sorted({name for r in runs for name, _ in engines_of(r)}, key=lambda n: (n != "plait", n))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(runs) + 2), 4.5))
    width = 0.8 / len(engines)
    for j, engine in enumerate(engines):
        values = []
        for r in runs:
            data = dict(engines_of(r)).get(engine)
            values.append((data["median"].get("output_tps") or 0) if data else 0)
        xs = [i + (j - (len(engines) - 1) / 2) * width for i in range(len(runs))]
        ax.bar(xs, values, width, label=engine)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([f"{offline_workload(r)}\n{result_dtype(r)} seqs={(r.get('config') or {}).get('max_num_seqs')}"
                        f"\n{str(r.get('timestamp') or r['_file'])[:16]}" for r in runs], fontsize="small")
    ax.set_ylabel("output tokens/s (median)")
    ax.set_title("offline throughput per engine")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_sweep(result: dict[str, Any], path: Path) -> bool:
    """Two swept settings: a heat map of the metric; one: a line; more: not plotted."""
    params = result.get("params") or {}
    metric = result.get("metric", "output_tps")
    ok = [p for p in result.get("points") or [] if p.get(metric) is not None]
    if not ok or len(params) not in (1, 2):
        return False
    plt = pyplot()
    names = list(params)
    if len(params) == 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        values = params[names[0]]
        by = {repr(p["settings"][names[0]]): p[metric] for p in ok}
        ax.plot(range(len(values)), [by.get(repr(v), float("nan")) for v in values], marker="o")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([str(v) for v in values])
        ax.set_xlabel(names[0])
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    else:
        ys, xs = params[names[0]], params[names[1]]
        by = {(repr(p["settings"][names[0]]), repr(p["settings"][names[1]])): p[metric] for p in ok}
        grid = [[by.get((repr(y), repr(x)), float("nan")) for x in xs] for y in ys]
        fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * len(xs) + 3), 0.9 * len(ys) + 2.5))
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax, label=metric)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_yticks(range(len(ys)))
        ax.set_yticklabels([str(y) for y in ys])
        ax.set_xlabel(names[1])
        ax.set_ylabel(names[0])
        top = max(v for row in grid for v in row if v == v)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v != v else f"{v:,.0f}", ha="center", va="center",
                        color="black" if v == v and v > 0.6 * top else "white", fontsize="small")
    ax.set_title(f"sweep: {metric}\n{result.get('workload_description') or ''}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(results: list[dict[str, Any]], out_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every plot there is data for. Returns ([(title, file name)], [notes on plots skipped])."""
    try:
        pyplot()
    except ImportError:
        return [], ["matplotlib is not installed (an optional extra: pip install 'plait[bench]'): no plots, tables only"]
    made, skipped = [], []
    plan = [("Throughput vs concurrency", "throughput_vs_concurrency.png", plot_throughput_vs_concurrency,
             "no serve or offline runs with throughput"),
            ("Serving latency percentiles", "serve_latency.png", plot_serve_latency, "no serve runs"),
            ("Offline throughput per engine", "offline_throughput.png", plot_offline_throughput, "no offline runs"),
            ("Shared prefix: wall time vs prefix length", "shared_prefix.png", plot_prefix_len,
             "no offline shared-prefix runs")]
    for title, name, draw, why in plan:
        if draw(results, out_dir / name):
            made.append((title, name))
        else:
            skipped.append(f"{name}: {why}")
    for r in results:
        if is_serve_sweep(r):
            name = f"serve_sweep-{Path(r['_file']).stem}.png"
            if plot_serve_sweep(r, out_dir / name):
                made.append((f"Serving vs concurrency, {r['_file']}", name))
            else:
                skipped.append(f"{name}: no serving metrics")
        if r.get("benchmark") == "sweep":
            name = f"sweep-{Path(r['_file']).stem}.png"
            if plot_sweep(r, out_dir / name):
                made.append((f"Sweep {r['_file']}", name))
            else:
                skipped.append(f"{name}: no successful points, or not 1-2 swept settings")
    return made, skipped


# -------------------------------------------------------------------------------------------- report


def build_markdown(results: list[dict[str, Any]], plots: list[tuple[str, str]], notes: list[str]) -> str:
    out = ["# plait benchmark report", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from {len(results)} result file(s). "
           "Absolute numbers are from a shared, noisy machine: compare ratios measured in the same run.", ""]
    machines = {json.dumps({k: (r.get("machine") or {}).get(k) for k in ("cpu_model", "cpu_count", "torch")},
                           sort_keys=True) for r in results if r.get("machine")}
    if machines:
        out += ["## Machine", ""]
        out += [md_table(["cpu", "cores", "torch"], [[m["cpu_model"], m["cpu_count"], m["torch"]]
                                                    for m in map(json.loads, sorted(machines))]), ""]
    rows = offline_rows(results)
    if rows:
        headers, rows = drop_empty_columns(OFFLINE_HEADERS, rows)
        out += ["## Offline throughput", "", md_table(headers, rows), ""]
        if "peak RSS MiB" in headers:
            out += ["Peak RSS is the benchmark process's (getrusage): engines that ran in it share one figure; "
                    "llama.cpp runs as a process of its own and is not covered.", ""]
    rows = latency_rows(results)
    if rows:
        out += ["## Batch-1 latency (medians)", "",
                md_table(["file", "engine", "in/out", "dtype", "threads", "TTFT ms", "prefill tok/s", "decode tok/s",
                          "e2e s"], rows), ""]
    tput, lat = serve_rows(results)
    if tput:
        headers, tput = drop_empty_columns(SERVE_HEADERS, tput)
        out += ["## Serving", "", md_table(headers, tput), "", "Latency percentiles (ms):", "",
                md_table(["engine", "concurrency"] + [f"{label} {p}" for _, label in SERVE_METRICS
                                                      for p in PERCENTILES], lat), ""]
        if "peak RSS MiB" in headers:
            out += ["Peak RSS is VmHWM of the server process: for the --base-url server (--server-pid), its peak "
                    "since it started; for a baseline the benchmark started, that server's own peak.", ""]
        ratios = serve_ratio_rows(results)
        if ratios:
            out += ["Server / baseline, measured in the same run (output tok/s: above 1x is faster; p99 TPOT: "
                    "below 1x is faster):", "",
                    md_table(*drop_empty_columns(RATIO_HEADERS, ratios)), ""]
    for r in results:
        if r.get("benchmark") == "sweep":
            names, rows = sweep_rows(r)
            best = r.get("best") or {}
            out += [f"## Sweep {r['_file']}", "", f"{r.get('workload_description') or ''}; best by "
                    f"{r.get('metric')}: {best.get('settings')}"
                    + (f" (config: `{r['config_file']}`)" if r.get("config_file") else ""), "",
                    md_table(names + ["output tok/s", "total tok/s", "wall s"], rows), ""]
    for r in results:
        if r.get("benchmark") == "roofline":
            c = r.get("ceilings") or {}
            rows = [[f"GEMM {d} GFLOP/s", v] for d, v in (c.get("gemm_gflops") or {}).items()]
            rows.append(["memory read GB/s", c.get("bandwidth_gbs")])
            out += [f"## Roofline {r['_file']}", "", md_table(["ceiling", "value"], rows), ""]
            frac_rows = [[Path(f["file"]).name, row["engine"], row["metric"], row["tokens_per_s"], row["bound"],
                          f"{row['fraction']:.1%}" if row.get("fraction") is not None else None]
                         for f in r.get("fractions") or [] for row in f.get("rows") or []]
            if frac_rows:
                out += [md_table(["result", "engine", "metric", "tok/s", "bound", "of ceiling"], frac_rows), ""]
    if plots:
        out += ["## Plots", ""]
        out += [f"### {title}\n\n![{title}]({name})\n" for title, name in plots]
    if notes:
        out += ["## Skipped", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out).rstrip() + "\n"


def write_report(results_dir: str | Path, plots: bool = True, output: str | Path | None = None) -> Path:
    """Read RESULTS_DIR, draw the plots there, write the markdown; returns its path."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir} is not a directory of benchmark results")
    results, notes = load_results(results_dir)
    if not results:
        raise ValueError(f"no plait benchmark results (*.json) in {results_dir}")
    made: list[tuple[str, str]] = []
    if plots:
        made, skipped = write_plots(results, results_dir)
        notes += skipped
    path = Path(output) if output else results_dir / "REPORT.md"
    path.write_text(build_markdown(results, made, notes))
    return path


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `report` under `plait bench`'s sub-parsers."""
    p = subparsers.add_parser("report", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="markdown summary and PNG plots from saved benchmark JSON",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", nargs="?", default="results",
                   help="folder of benchmark JSON files; REPORT.md and the PNGs are written there")
    p.add_argument("--no-plots", action="store_true", help="markdown only")
    p.add_argument("--output", "-o", default=None, help="markdown path (default RESULTS_DIR/REPORT.md)")
    p.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    path = write_report(args.results_dir, plots=not args.no_plots, output=args.output)
    print(f"report written to {path}")
    return 0
