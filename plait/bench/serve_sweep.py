"""`plait bench serve` at several concurrencies and repeats, optionally against llama-server, saved as one JSON.

For each concurrency C of `--concurrency 1,8,32`, in the order given:

1. draw the workloads of its R repeats, with seed --seed + run index: fresh prompts for every run, so no server
   answers a run from a prefix cache an earlier run filled; the server / baseline pair of a repeat gets the same
   prompts;
2. with `--baseline llama.cpp`, start llama-server with `--parallel C`, its context sized for those prompts;
3. R times: the load against --base-url, then the same load against the baseline (A B A B: each pair sees the
   same machine noise, as in `bench offline --repeats`);
4. read the baseline's peak RSS (VmHWM) before it stops, and the --base-url server's when --server-pid is given.

The JSON: {"benchmark": "serve", "concurrencies", "repeats", "workload", ..., "results": [entry, ...]}. An entry
has the shape a one-concurrency run always had: the --base-url server's metrics at its top level (medians over
the repeats, each repeat's own in "runs"), "max_concurrency", "seeds", "server_peak_rss"; per baseline a nested
"llama.cpp" (the same metrics, "runs", "peak_rss", version, parallel, ...) and "ratio_llama.cpp" (server over
baseline: output tok/s and p99 TPOT, the median of the per-pair ratios, and the pairs). With one concurrency the
entry is also copied to the top level, so readers of the one-run format keep working (plait.bench.results reads
both).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, ContextManager, Iterator

from plait.bench import report
from plait.bench.serve import measure, print_summary, server_peak_rss_kib
from plait.bench.workloads import Workload

RATIO_METRICS = ("output_throughput", "p99_tpot_ms")  # the server over the baseline: higher / lower is better
# (base_url, workload, model, concurrency or None) -> one run's summary; tests pass a stub
LoadFn = Callable[[str, Workload, str, int | None], dict[str, Any]]


@dataclass
class BaselineServer:
    """A baseline server this benchmark started: its name in the JSON, where it listens, the model name to send,
    its pid (for its peak RSS) and what it is (version, command settings) for the JSON."""

    name: str
    base_url: str
    model: str
    pid: int | None
    info: dict[str, Any] = field(default_factory=dict)


# (parallel, the workloads it will serve) -> a context holding the running baseline, or None if it cannot run
StartBaseline = Callable[[int, list[Workload]], ContextManager["BaselineServer | None"]]


@dataclass
class ConcurrencyRuns:
    """What was measured at one concurrency, before it becomes a JSON entry."""

    concurrency: int | None  # None: every request at once
    seeds: list[int]
    target: list[dict[str, Any]] = field(default_factory=list)  # summaries of the runs against --base-url
    target_rss_kib: int | None = None
    baseline: BaselineServer | None = None
    baseline_runs: list[dict[str, Any]] = field(default_factory=list)
    baseline_rss_kib: int | None = None

    def to_entry(self, server_pid: int | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"max_concurrency": self.concurrency, "seeds": self.seeds,
                                 **median_summary(self.target), "runs": self.target}
        if self.target_rss_kib is not None and server_pid is not None:
            entry["server_peak_rss"] = peak_rss_record(
                self.target_rss_kib, server_pid, "peak since the server started, so it covers the runs before too")
        if self.baseline is not None and self.baseline_runs:
            b = self.baseline
            entry[b.name] = {**b.info, **median_summary(self.baseline_runs), "runs": self.baseline_runs}
            if self.baseline_rss_kib is not None and b.pid is not None:
                entry[b.name]["peak_rss"] = peak_rss_record(self.baseline_rss_kib, b.pid,
                                                            "this server's own peak, read before it was stopped")
            entry[f"ratio_{b.name}"] = pair_ratios(self.target, self.baseline_runs)
        return entry


def peak_rss_record(kib: int, pid: int, note: str) -> dict[str, Any]:
    return {"kib": kib, "mib": kib / 1024, "pid": pid, "source": "VmHWM of /proc/PID/status", "note": note}


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's median over repeated runs' summaries; one run gives itself back. Counts stay integers (the
    lower median); a metric no run has (no successful request) stays None; non-numbers (the goodput SLOs) are
    the first run's; errors are pooled (the first 10)."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        nums = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if key == "errors":
            out[key] = [e for r in runs for e in r.get("errors") or ()][:10]
        elif isinstance(first, bool) or not isinstance(first, (int, float, type(None))):
            out[key] = first
        elif not nums:
            out[key] = None
        else:
            out[key] = statistics.median_low(nums) if all(isinstance(v, int) for v in nums) else report.median(nums)
    return out


def pair_ratios(target: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """Server over baseline per repeat (runs back to back saw the same machine noise), and their median;
    a pair missing a value (no successful request) is None and left out of the median."""
    out: dict[str, Any] = {}
    for metric in RATIO_METRICS:
        pairs = [a[metric] / b[metric] if a.get(metric) is not None and b.get(metric) else None
                 for a, b in zip(target, baseline)]
        known = [x for x in pairs if x is not None]
        out[metric] = report.median(known) if known else None
        out[f"{metric}_per_pair"] = pairs
    return out


@contextlib.contextmanager
def llamacpp_baseline(args: argparse.Namespace, parallel: int,
                      workloads: list[Workload]) -> Iterator[BaselineServer | None]:
    """llama-server on the GGUF the prompts were drawn for, --parallel `parallel`, with room for the longest of
    `workloads`' prompts; yields None (reason printed) when llama.cpp cannot be built or started."""
    from plait.bench.llamacpp import LlamaCppUnavailable, ensure_llamacpp, llama_server, server_context_size
    from plait.bench.serve import _served_model
    from plait.loading.sources import resolve_model

    gguf = resolve_model(args.tokenizer)
    ctx = server_context_size(parallel, max(len(p) for w in workloads for p in w.prompts),
                              max(n for w in workloads for n in w.output_lens))
    with contextlib.ExitStack() as stack:  # stops the server however the runs end
        server = None
        try:
            if gguf.suffix != ".gguf":
                raise LlamaCppUnavailable(f"{gguf} is not a GGUF file")
            paths = ensure_llamacpp()
            server = stack.enter_context(llama_server(paths, gguf, parallel, ctx, threads=2))
        except LlamaCppUnavailable as exc:
            print(f"llama.cpp baseline skipped: {exc}", file=sys.stderr)
        if server is None:
            yield None
            return
        print(f"\nllama.cpp {paths.version}: llama-server --parallel {parallel} --cont-batching -c {ctx} -t 2 "
              f"on {gguf} (pid {server.pid})")
        yield BaselineServer("llama.cpp", server.base_url, _served_model(args, server.base_url), server.pid,
                             {"version": paths.version, "model": str(gguf), "parallel": parallel, "ctx_size": ctx,
                              "threads": 2})


def run_serve_sweep(args: argparse.Namespace, model: str, workload_for: Callable[[int], Workload],
                    load: LoadFn | None = None, start_baseline: StartBaseline | None = None) -> dict[str, Any]:
    """Measure every concurrency of `args` (see the module docstring), print one row per concurrency, and return
    the JSON payload. `workload_for(seed)` draws the workload; `load` and `start_baseline` default to the real
    HTTP load and llama-server (tests pass stubs)."""
    load = load or partial(measure, args)
    if start_baseline is None and args.baseline == "llama.cpp":
        start_baseline = partial(llamacpp_baseline, args)
    concurrencies: list[int | None] = list(args.concurrency or [None])
    repeats = args.repeats
    detailed = len(concurrencies) == 1 and repeats == 1  # one run per system: vLLM's full tables, as before
    measured: list[ConcurrencyRuns] = []
    first_workload: Workload | None = None
    for i, conc in enumerate(concurrencies):
        seeds = [args.seed + i * repeats + r for r in range(repeats)]
        workloads = [workload_for(seed) for seed in seeds]
        if first_workload is None:
            first_workload = workloads[0]
        runs = ConcurrencyRuns(conc, seeds)
        parallel = conc or len(workloads[0])
        baseline_cm = start_baseline(parallel, workloads) if start_baseline else contextlib.nullcontext(None)
        with baseline_cm as baseline:
            runs.baseline = baseline
            for r, workload in enumerate(workloads):
                where = f"concurrency {conc or 'all'}, run {r + 1}/{repeats}"
                summary = load(args.base_url, workload, model, conc)
                runs.target.append(summary)
                _report_run(summary, f"{args.base_url} model={model}: {workload.describe()}, rate="
                                     f"{args.request_rate}, {where}", detailed)
                if baseline is not None:
                    summary = load(baseline.base_url, workload, baseline.model, conc)
                    runs.baseline_runs.append(summary)
                    _report_run(summary, f"{baseline.name} ({baseline.base_url}): {where}", detailed)
            if baseline is not None and baseline.pid is not None:
                runs.baseline_rss_kib = server_peak_rss_kib(baseline.base_url, baseline.pid)
        runs.target_rss_kib = server_peak_rss_kib(args.base_url, args.server_pid)
        measured.append(runs)
    entries = [m.to_entry(args.server_pid) for m in measured]
    print("\n" + format_sweep(entries))
    return build_payload(args, model, first_workload, concurrencies, entries)


def _report_run(summary: dict[str, Any], title: str, detailed: bool) -> None:
    if detailed:
        print_summary(summary, title)
        return
    p99 = summary.get("p99_tpot_ms")
    print(f"{title}: {summary['completed']}/{summary['failed']} ok/failed, {summary['output_throughput']:,.1f} "
          f"output tok/s, p99 TPOT {'-' if p99 is None else f'{p99:,.1f}'} ms")


def build_payload(args: argparse.Namespace, model: str, workload: Workload, concurrencies: list[int | None],
                  entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole JSON: the run's settings, then one entry per concurrency (mirrored at the top when only one)."""
    payload: dict[str, Any] = {
        "benchmark": "serve", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv,
        "base_url": args.base_url, "model": model,
        "workload": {"name": workload.name, "num_prompts": len(workload), "seed": workload.seed,
                     "input_tokens": workload.prompt_tokens, "output_len": args.output_len,
                     "output_tokens": workload.output_tokens, "description": workload.describe(),
                     "seed_per_run": "--seed + run index (the entry's 'seeds'); a server / baseline pair shares one"},
        "request_rate": None if args.request_rate == float("inf") else args.request_rate,
        "concurrencies": concurrencies, "repeats": args.repeats, "machine": report.machine_info(),
        "results": entries,
    }
    if len(entries) == 1:
        # the one-run format's top level, for its readers (roofline, scripts, older report code)
        payload.update({k: v for k, v in entries[0].items() if k not in ("runs", "seeds")})
    return payload


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else report.fmt(float(value), digits)


def format_sweep(entries: list[dict[str, Any]]) -> str:
    """One row per concurrency: the server's throughput, tail latency, goodput and peak RSS (the columns there is
    data for), then each baseline's and the ratios; per-pair ratios below when the runs were repeated."""
    baselines = sorted({k.removeprefix("ratio_") for e in entries for k in e if k.startswith("ratio_")})
    cols: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("concurrency", lambda e: str(e["max_concurrency"] or "all")),
        ("output tok/s", lambda e: _num(e["output_throughput"])),
        ("p99 TTFT ms", lambda e: _num(e["p99_ttft_ms"])),
        ("p99 TPOT ms", lambda e: _num(e["p99_tpot_ms"]))]
    if any("request_goodput" in e for e in entries):
        cols.append(("goodput req/s", lambda e: _num(e.get("request_goodput"), 2)))
    if any("server_peak_rss" in e for e in entries):
        cols.append(("peak RSS MiB", lambda e: _num((e.get("server_peak_rss") or {}).get("mib"), 0)))
    for name in baselines:
        cols += [(f"{name} tok/s", lambda e, n=name: _num((e.get(n) or {}).get("output_throughput"))),
                 (f"{name} p99 TPOT", lambda e, n=name: _num((e.get(n) or {}).get("p99_tpot_ms"))),
                 (f"{name} RSS MiB", lambda e, n=name: _num(((e.get(n) or {}).get("peak_rss") or {}).get("mib"), 0)),
                 ("tok/s ratio", lambda e, n=name: _x((e.get(f"ratio_{n}") or {}).get("output_throughput"))),
                 ("p99 TPOT ratio", lambda e, n=name: _x((e.get(f"ratio_{n}") or {}).get("p99_tpot_ms")))]
    repeats = max(len(e["runs"]) for e in entries)
    lines = ["plait bench serve: one row per concurrency" + (f", medians of {repeats} runs" if repeats > 1 else ""),
             report.table([c[0] for c in cols], [[fn(e) for _, fn in cols] for e in entries])]
    for name in baselines:
        lines.append(f"ratios: server / {name} (output tok/s: above 1x the server is faster; p99 TPOT: below 1x)")
        if repeats > 1:
            for e in entries:
                r = e.get(f"ratio_{name}") or {}
                lines.append(f"  concurrency {e['max_concurrency'] or 'all'} per pair: output tok/s "
                             + " ".join(map(_x, r.get("output_throughput_per_pair") or ()))
                             + "; p99 TPOT " + " ".join(map(_x, r.get("p99_tpot_ms_per_pair") or ())))
    return "\n".join(lines)
