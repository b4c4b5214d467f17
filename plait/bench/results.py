"""Reading the benchmarks' saved JSON, in every format they have written, for `plait bench report` and roofline.

Serve results come in two shapes: one run per file (the --base-url server's metrics at the top level, a baseline
such as "llama.cpp" nested in it), and the per-concurrency form `bench serve --concurrency 1,8,32` writes (a
"results" list whose entries each have that same shape). `serve_entries` turns both into the one-run shape, so
everything downstream reads one format. No plotting here: this module must import without matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KNOWN = ("offline", "latency", "serve", "sweep", "roofline")


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


# ---------------------------------------------------------------------------------------------- serve


def serve_entries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A serve result as one-run-shaped dicts, one per concurrency: the entries of its "results" list, each
    with the file's own fields (model, workload, machine, ...) under it; an old one-run file is its own entry."""
    entries = result.get("results")
    if not isinstance(entries, list):
        return [result]
    # A one-concurrency file also mirrors its entry at the top level; the entry's own values win either way.
    meta = {k: v for k, v in result.items() if k != "results"}
    return [dict(meta, **e) for e in entries if isinstance(e, dict)]


def serve_engine(result: dict[str, Any]) -> str:
    """Which system a serve run measured: its 'engine' (or 'server'/'backend') field, else the model name."""
    for key in ("engine", "server", "backend"):
        if isinstance(result.get(key), str) and result[key]:
            return result[key]
    return str(result.get("model") or result.get("base_url") or "server")


def serve_systems(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, metrics) of each system in one serve entry: the --base-url server (the entry's top level), then
    every baseline nested in it (a sub-dict with serving metrics). "ratio_*" sub-dicts hold ratios, not a system."""
    systems = [(serve_engine(entry), entry)]
    systems += [(k, v) for k, v in entry.items()
                if isinstance(v, dict) and "output_throughput" in v and not k.startswith("ratio")]
    return systems


def serve_concurrency(result: dict[str, Any]) -> int | None:
    """Requests in flight at most: --max-concurrency, or every prompt at once when it was not capped."""
    if result.get("max_concurrency"):
        return int(result["max_concurrency"])
    n = (result.get("workload") or {}).get("num_prompts") or result.get("completed")
    return int(n) if n else None


def serve_peak_rss_mib(data: dict[str, Any]) -> float | None:
    """A serve system's peak RSS in MiB: "server_peak_rss" (the --base-url server, --server-pid) or "peak_rss"
    (a baseline the benchmark started itself); None when it was not measured."""
    rss = data.get("server_peak_rss") or data.get("peak_rss")
    return rss.get("mib") if isinstance(rss, dict) else None


def serve_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (system, concurrency) measured by the serve results, each as one flat dict with '_engine',
    '_concurrency' and '_peak_rss_mib' added. Per-repeat metrics, when the run was repeated, stay in 'runs'."""
    runs = []
    for r in results:
        if r.get("benchmark") != "serve":
            continue
        for entry in serve_entries(r):
            conc = serve_concurrency(entry)
            for name, data in serve_systems(entry):
                if data is entry:
                    runs.append(dict(entry, _engine=name, _concurrency=conc, _peak_rss_mib=serve_peak_rss_mib(entry)))
                else:
                    runs.append(dict(data, _file=r["_file"], workload=entry.get("workload"),
                                     request_rate=entry.get("request_rate"), _engine=name,
                                     _concurrency=data.get("parallel") or conc, _peak_rss_mib=serve_peak_rss_mib(data)))
    return runs


def serve_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every "ratio_<baseline>" of the serve results: {file, concurrency, baseline, output_throughput,
    p99_tpot_ms, and the *_per_pair lists when the run was repeated}."""
    rows = []
    for r in results:
        if r.get("benchmark") != "serve":
            continue
        for entry in serve_entries(r):
            for key, ratio in entry.items():
                if key.startswith("ratio_") and isinstance(ratio, dict):
                    rows.append(dict(ratio, file=r["_file"], concurrency=serve_concurrency(entry),
                                     baseline=key.removeprefix("ratio_")))
    return rows


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


# -------------------------------------------------------------------------------------------- offline


def prefix_caching(result: dict[str, Any]) -> bool:
    """Whether plait ran with its prefix cache; results from before the flag was recorded ran with the default, on."""
    engine = (result.get("config") or {}).get("engine") or {}
    return engine.get("enable_prefix_caching") is not False


def shared_prefix_config(result: dict[str, Any]) -> dict[str, Any] | None:
    """{num_groups, prompts_per_group, prefix_len, question_len} of a shared-prefix offline run, else None."""
    cfg = result.get("config") or {}
    shape = cfg.get("shared_prefix")
    if cfg.get("workload") != "shared-prefix" or not isinstance(shape, dict) or shape.get("prefix_len") is None:
        return None
    return shape


def offline_workload(result: dict[str, Any]) -> str:
    cfg = result.get("config") or {}
    cache = "" if prefix_caching(result) else ", no prefix cache"
    if cfg.get("workload") == "fixed":
        return f"fixed {cfg.get('num_prompts')}x {cfg.get('input_len')}/{cfg.get('output_len')}{cache}"
    shape = shared_prefix_config(result)
    if shape is not None:
        return (f"shared-prefix {shape.get('num_groups')}x{shape.get('prompts_per_group')} "
                f"P{shape['prefix_len']}+Q{shape.get('question_len')}/{cfg.get('output_len')}{cache}")
    rng = cfg.get("input_len_range") or ["?", "?"]
    return f"{cfg.get('workload')} {cfg.get('num_prompts')}x {rng[0]}-{rng[1]}/{cfg.get('output_len')}{cache}"


def offline_shape(result: dict[str, Any]) -> str:
    """The workload without its prompt count, for plots whose x axis is the sequences at once: a sweep over batch
    sizes (one fixed run per size, as many prompts as sequences) is then one line per engine."""
    cfg = result.get("config") or {}
    if cfg.get("workload") == "fixed":
        return offline_workload(result).replace(f"fixed {cfg.get('num_prompts')}x ", "fixed ", 1)
    return offline_workload(result)


def offline_parallelism(result: dict[str, Any], engine: str, data: dict[str, Any]) -> int | None:
    """How many sequences the engine ran at once: plait's max_num_seqs, a baseline's batch size / parallel."""
    for key in ("batch_size", "parallel", "max_num_seqs"):
        if isinstance(data.get(key), int):
            return data[key]
    if engine == "plait":
        return (result.get("config") or {}).get("max_num_seqs")
    return None


def offline_peak_rss_mib(result: dict[str, Any], engine: str) -> float | None:
    """The benchmark process's peak RSS, for the engines that ran in that process (plait, and HF when it ran);
    llama.cpp runs as its own process and is not covered."""
    rss = result.get("peak_rss")
    if not isinstance(rss, dict) or engine not in (rss.get("includes") or ["plait"]):
        return None
    return rss.get("mib")


def result_dtype(result: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    return str((data or {}).get("dtype") or (result.get("machine") or {}).get("dtype") or "")
