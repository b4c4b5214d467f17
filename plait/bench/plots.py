"""`plait bench report RESULTS_DIR`: one markdown summary and PNG plots from the benchmarks' saved JSON.

Reads every `*.json` directly in RESULTS_DIR (not sub-folders: a sweep keeps its per-point runs in one) that a
plait benchmark wrote (`offline`, `latency`, `serve`, `sweep`, `roofline`), and writes RESULTS_DIR/REPORT.md with
tables plus, when matplotlib is installed, PNGs next to it:

- throughput_vs_concurrency.png: serve output tok/s vs max concurrency, and offline output tok/s vs
  max_num_seqs (HF: its batch size), one line per engine (and workload, when several);
- serve_latency.png: TTFT / TPOT / ITL / E2E p50, p90, p99 of each serve run;
- offline_throughput.png: output tok/s per engine for each offline run;
- sweep-<name>.png: a heat map (two swept settings) or a line (one) of each sweep.

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

from plait.bench.report import fmt, median

KNOWN = ("offline", "latency", "serve", "sweep", "roofline")
SERVE_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))
PERCENTILES = ("p50", "p90", "p99")


# ------------------------------------------------------------------------------------------ reading


def load_results(results_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(results sorted by timestamp then file name, each with '_file' set; notes on files skipped)."""
    results, skipped = [], []
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name.endswith(".config.json"):  # a sweep's best settings, not a result
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append(f"{path.name}: unreadable ({type(exc).__name__})")
            continue
        if not isinstance(data, dict) or data.get("benchmark") not in KNOWN:
            skipped.append(f"{path.name}: not a plait benchmark result")
            continue
        data["_file"] = path.name
        results.append(data)
    results.sort(key=lambda r: (str(r.get("timestamp") or ""), r["_file"]))
    return results, skipped


def engines_of(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of every engine in an offline/latency result: top-level entries with 'runs' and 'median'."""
    return [(k, v) for k, v in result.items()
            if isinstance(v, dict) and isinstance(v.get("median"), dict) and "runs" in v]


def serve_engine(result: dict[str, Any]) -> str:
    """Which system a serve run measured: its 'engine' (or 'server'/'backend') field, else the model name."""
    for key in ("engine", "server", "backend"):
        if result.get(key):
            return str(result[key])
    return str(result.get("model") or result.get("base_url") or "server")


def serve_concurrency(result: dict[str, Any]) -> int | None:
    """Requests in flight at most: --max-concurrency, or every prompt at once when it was not capped."""
    if result.get("max_concurrency"):
        return int(result["max_concurrency"])
    n = (result.get("workload") or {}).get("num_prompts") or result.get("completed")
    return int(n) if n else None


def serve_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every system measured by the serve results: the --base-url server (top-level metrics) and each baseline
    nested in the same JSON (a sub-object with serving metrics, e.g. "llama.cpp"), each as one flat dict with
    '_engine' and '_concurrency' added."""
    runs = []
    for r in results:
        if r.get("benchmark") != "serve":
            continue
        runs.append(dict(r, _engine=serve_engine(r), _concurrency=serve_concurrency(r)))
        for key, sub in r.items():
            if isinstance(sub, dict) and "output_throughput" in sub:
                runs.append(dict(sub, _file=r["_file"], workload=r.get("workload"), request_rate=r.get("request_rate"),
                                 _engine=key, _concurrency=sub.get("parallel") or serve_concurrency(r)))
    return runs


def serve_workload(result: dict[str, Any]) -> str:
    w = result.get("workload") or {}
    n = w.get("num_prompts")
    mean_in = round(w["input_tokens"] / n) if n and w.get("input_tokens") else "?"
    rate = result.get("request_rate")
    return f"{w.get('name', '?')} {mean_in}/{w.get('output_len', '?')}" + (f" @{rate}/s" if rate else "")


def serve_percentile(result: dict[str, Any], metric: str, p: str) -> float | None:
    """p50/p90/p99 of ttft/tpot/itl/e2el in ms; p50 is the JSON's median_* unless a p50_* key exists."""
    value = result.get(f"{p}_{metric}_ms")
    if value is None and p == "p50":
        value = result.get(f"median_{metric}_ms")
    return value


def offline_workload(result: dict[str, Any]) -> str:
    cfg = result.get("config") or {}
    if cfg.get("workload") == "fixed":
        return f"fixed {cfg.get('num_prompts')}x {cfg.get('input_len')}/{cfg.get('output_len')}"
    rng = cfg.get("input_len_range") or ["?", "?"]
    return f"{cfg.get('workload')} {cfg.get('num_prompts')}x {rng[0]}-{rng[1]}/{cfg.get('output_len')}"


def offline_parallelism(result: dict[str, Any], engine: str, data: dict[str, Any]) -> int | None:
    """How many sequences the engine ran at once: plait's max_num_seqs, a baseline's batch size / parallel."""
    for key in ("batch_size", "parallel", "max_num_seqs"):
        if isinstance(data.get(key), int):
            return data[key]
    if engine == "plait":
        return (result.get("config") or {}).get("max_num_seqs")
    return None


def _dtype(result: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    return str((data or {}).get("dtype") or (result.get("machine") or {}).get("dtype") or "")


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


def offline_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        if r.get("benchmark") != "offline":
            continue
        plait_tps = ((r.get("plait") or {}).get("median") or {}).get("output_tps")
        for name, data in engines_of(r):
            m = data["median"]
            ratio = plait_tps / m["output_tps"] if name != "plait" and plait_tps and m.get("output_tps") else None
            rows.append([r["_file"], name, offline_workload(r), offline_parallelism(r, name, data), _dtype(r, data),
                         len(data.get("runs") or []), m.get("output_tps"), m.get("total_tps"), m.get("wall_s"),
                         f"{ratio:.2f}x" if ratio else None])
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
            rows.append([r["_file"], name, f"{cfg.get('input_len')}/{cfg.get('output_len')}", _dtype(r, data),
                         (r.get("machine") or {}).get("torch_threads"), ttft * 1000 if ttft is not None else None,
                         m.get("prefill_tps"), m.get("decode_tps"), m.get("total_s")])
    return rows


def serve_rows(results: list[dict[str, Any]]) -> tuple[list[list[Any]], list[list[Any]]]:
    """(throughput rows, latency-percentile rows) of the serve runs."""
    tput, lat = [], []
    for r in serve_runs(results):
        engine, conc = r["_engine"], r["_concurrency"]
        tput.append([r["_file"], engine, serve_workload(r), conc, f"{r.get('completed', 0)}/{r.get('failed', 0)}",
                     r.get("request_throughput"), r.get("output_throughput"), r.get("total_token_throughput")])
        row = [engine, conc]
        for metric, _ in SERVE_METRICS:
            row += [serve_percentile(r, metric, p) for p in PERCENTILES]
        lat.append(row)
    return tput, lat


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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput_vs_concurrency(results: list[dict[str, Any]], path: Path) -> bool:
    """Serve: output tok/s vs max concurrency; offline: output tok/s vs sequences at once. Per engine (x workload)."""
    panels: dict[str, dict[tuple[str, str], list[tuple[int, float]]]] = {"serve": defaultdict(list),
                                                                          "offline": defaultdict(list)}
    for r in serve_runs(results):
        conc, tps = r["_concurrency"], r.get("output_throughput")
        if conc and tps:
            panels["serve"][(r["_engine"], serve_workload(r))].append((conc, tps))
    for r in results:
        if r.get("benchmark") == "offline":
            for name, data in engines_of(r):
                par, tps = offline_parallelism(r, name, data), data["median"].get("output_tps")
                if par and tps:
                    panels["offline"][(name, offline_workload(r))].append((par, tps))
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return False
    plt = _pyplot()
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
    plt = _pyplot()
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
    plt = _pyplot()
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
    ax.set_xticklabels([f"{offline_workload(r)}\n{_dtype(r)} seqs={(r.get('config') or {}).get('max_num_seqs')}"
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
    plt = _pyplot()
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
        _pyplot()
    except ImportError:
        return [], ["matplotlib is not installed (pip install matplotlib): no plots"]
    made, skipped = [], []
    plan = [("Throughput vs concurrency", "throughput_vs_concurrency.png", plot_throughput_vs_concurrency,
             "no serve or offline runs with throughput"),
            ("Serving latency percentiles", "serve_latency.png", plot_serve_latency, "no serve runs"),
            ("Offline throughput per engine", "offline_throughput.png", plot_offline_throughput, "no offline runs")]
    for title, name, draw, why in plan:
        if draw(results, out_dir / name):
            made.append((title, name))
        else:
            skipped.append(f"{name}: {why}")
    for r in results:
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
        out += ["## Offline throughput", "",
                md_table(["file", "engine", "workload", "seqs at once", "dtype", "runs", "output tok/s",
                          "total tok/s", "wall s", "plait / engine"], rows), ""]
    rows = latency_rows(results)
    if rows:
        out += ["## Batch-1 latency (medians)", "",
                md_table(["file", "engine", "in/out", "dtype", "threads", "TTFT ms", "prefill tok/s", "decode tok/s",
                          "e2e s"], rows), ""]
    tput, lat = serve_rows(results)
    if tput:
        out += ["## Serving", "",
                md_table(["file", "engine", "workload", "max concurrency", "ok/failed", "req/s", "output tok/s",
                          "total tok/s"], tput), "", "Latency percentiles (ms):", "",
                md_table(["engine", "concurrency"] + [f"{label} {p}" for _, label in SERVE_METRICS
                                                      for p in PERCENTILES], lat), ""]
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
