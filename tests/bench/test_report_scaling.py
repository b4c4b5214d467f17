"""`plait bench report` on the newer results: a serve sweep (--concurrency A,B --repeats R), offline shared-prefix
runs at several --prefix-len, goodput and peak-RSS columns. Synthetic JSON in tmp_path; no speed asserted."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from plait.bench.plots import write_report
from plait.bench.plots_scaling import is_serve_sweep, prefix_len_series, serve_sweep_series
from plait.bench.results import load_results, serve_entries, serve_runs
from plait.bench.roofline import result_rates
from plait.bench.serve import RequestResult, parse_goodput, summarize
from plait.bench.serve_sweep import BaselineServer, run_serve_sweep
from plait.bench.workloads import fixed_workload
from plait.cli import build_parser


def _serve_sweep(repeats=2, concurrencies="1,4"):
    """A sweep JSON as `bench serve` writes it, from a stub load (the baseline half as fast)."""
    args = build_parser().parse_args(["bench", "serve", "--concurrency", concurrencies, "--repeats", str(repeats),
                                      "--baseline", "llama.cpp", "--server-pid", str(os.getpid()),
                                      "--goodput", "ttft:150"])

    def load(base_url, workload, model, concurrency):
        slow = 2.0 if base_url.endswith(":9") else 1.0
        results = [RequestResult(4, ok=True, output_tokens=3, ttft=0.1 * slow, latency=0.2 * slow)] * 4
        duration = slow * concurrency / (1 + workload.seed % 2)
        return summarize(results, duration=duration, slos=parse_goodput(["ttft:150"]))

    @contextlib.contextmanager
    def baseline(parallel, workloads):
        yield BaselineServer("llama.cpp", "http://127.0.0.1:9", "b", os.getpid(),
                             {"version": "t", "parallel": parallel})

    payload = run_serve_sweep(args, "plait-model", lambda seed: fixed_workload(4, 50, set(), 4, 3, seed), load=load,
                              start_baseline=baseline)
    return json.loads(json.dumps(payload))


def _shared_prefix(prefix_len, caching, walls, groups=4, prefill=None):
    runs = [{"wall_s": w, "output_tps": 100 / w, "total_tps": 300 / w, "prompt_tokens": 1000, "output_tokens": 100,
             "prefill_tokens": prefill if prefill is not None else (prefix_len * groups if caching else 1000)}
            for w in walls]
    return {"benchmark": "offline", "timestamp": f"2026-01-01T00:{prefix_len % 60:02d}:0{int(caching)}",
            "machine": {"cpu_count": 2, "cpu_model": "Test CPU", "torch": "2.x", "dtype": "bfloat16"},
            "config": {"workload": "shared-prefix", "num_prompts": groups * 8, "output_len": 8, "max_num_seqs": 32,
                       "input_len_range": [64, 512], "engine": {"enable_prefix_caching": caching},
                       "shared_prefix": {"num_groups": groups, "prompts_per_group": 8, "prefix_len": prefix_len,
                                         "question_len": 16}},
            "plait": {"runs": runs, "median": {"wall_s": sorted(walls)[len(walls) // 2], "output_tps": 1.0,
                                               "total_tps": 2.0}},
            "peak_rss": {"kib": 204800, "mib": 200.0, "includes": ["plait"]}}


@pytest.fixture
def results_dir(tmp_path):
    (tmp_path / "serve-sweep.json").write_text(json.dumps(_serve_sweep()))
    for prefix_len in (64, 128, 256):
        for caching in (True, False):
            walls = [prefix_len / (40 if caching else 10), prefix_len / (30 if caching else 8)]
            (tmp_path / f"sp-{prefix_len}-{caching}.json").write_text(
                json.dumps(_shared_prefix(prefix_len, caching, walls)))
    return tmp_path


def test_report_of_a_serve_sweep_and_shared_prefix_runs(results_dir):
    pytest.importorskip("matplotlib")
    md = write_report(results_dir).read_text()
    for png in ("serve_sweep-serve-sweep.png", "shared_prefix.png", "throughput_vs_concurrency.png"):
        assert (results_dir / png).stat().st_size > 1000 and f"({png})" in md
    # serving: a row per (system, concurrency), medians of the repeats, with goodput, SLOs, peak RSS and repeats
    serving = md[md.index("## Serving"):]
    header = next(line for line in serving.splitlines() if line.startswith("| file"))
    assert header.endswith("| goodput req/s | goodput SLOs | peak RSS MiB | repeats |")
    rows = [line for line in serving.splitlines() if line.startswith("| serve-sweep.json")]
    assert [r.split(" | ")[1:4:2] for r in rows[:4]] == [["plait-model", "1"], ["llama.cpp", "1"],
                                                         ["plait-model", "4"], ["llama.cpp", "4"]]
    assert all("ttft<=150ms" in r and r.rstrip(" |").endswith("| 2") for r in rows[:4])
    assert "ratio" not in " ".join(r.split(" | ")[1] for r in rows)  # ratios are not a system
    # the ratio table: medians and each pair
    assert "| serve-sweep.json | 1 | llama.cpp | 2.00x | 2.00x, 2.00x | 0.50x | 0.50x, 0.50x |" in md
    # offline: shared-prefix shape and cache setting in the workload, peak RSS of the engine process
    assert "| sp-64-False.json | plait | shared-prefix 4x8 P64+Q16/8, no prefix cache | 32 |" in md
    offline_header = next(line for line in md.splitlines() if line.startswith("| file | engine | workload | seqs"))
    assert offline_header.endswith("| peak RSS MiB |") and "| 200.0 |" in md


def test_old_results_keep_their_table_layout(tmp_path):
    one_run = {k: v for k, v in _serve_sweep(repeats=1, concurrencies="2").items()
               if k not in ("results", "server_peak_rss", "goodput_slos_ms", "good_requests", "request_goodput")}
    one_run["llama.cpp"] = {k: v for k, v in one_run["llama.cpp"].items()
                            if k not in ("peak_rss", "goodput_slos_ms", "good_requests", "request_goodput", "runs")}
    (tmp_path / "old.json").write_text(json.dumps(one_run))
    md = write_report(tmp_path, plots=False).read_text()
    assert "| file | engine | workload | max concurrency | ok/failed | req/s | output tok/s | total tok/s |\n" in md
    assert "| old.json | 2 | llama.cpp | 2.00x | 0.50x |" in md  # one pair: no per-pair columns


def test_serve_sweep_readers():
    sweep = dict(_serve_sweep(), _file="s.json")
    assert is_serve_sweep(sweep) and not is_serve_sweep(dict(_serve_sweep(concurrencies="4"), _file="o.json"))
    entries = serve_entries(sweep)
    assert [e["max_concurrency"] for e in entries] == [1, 4] and all(e["model"] == "plait-model" for e in entries)
    runs = serve_runs([sweep])
    assert [(r["_engine"], r["_concurrency"]) for r in runs] == [("plait-model", 1), ("llama.cpp", 1),
                                                                 ("plait-model", 4), ("llama.cpp", 4)]
    if os.path.exists(f"/proc/{os.getpid()}/status"):  # the stub's servers are this process
        assert all(r["_peak_rss_mib"] > 0 for r in runs)
    series = serve_sweep_series(sweep, "output_throughput")
    # each repeat's value is kept (seed parity halves or doubles the stub's duration), so the plot can show spread
    assert series["plait-model"] == {1: [3.0 * 4, 3.0 * 4 * 2], 4: [3.0, 3.0 * 2]}
    assert set(series) == {"plait-model", "llama.cpp"}
    # a single-concurrency file mirrors its entry at the top level, but is read once, not twice
    one = dict(_serve_sweep(concurrencies="4"), _file="o.json")
    assert len(serve_runs([one])) == 2
    rates = result_rates(sweep)
    assert [r["engine"] for r in rates] == ["plait-model c=1", "llama.cpp c=1", "plait-model c=4", "llama.cpp c=4"]
    assert [r["bound"] for r in rates] == ["bandwidth", "bandwidth", "compute", "compute"]


def test_prefix_len_series_groups_by_cache_and_shape(results_dir):
    (results_dir / "other-shape.json").write_text(json.dumps(_shared_prefix(128, True, [9.0], groups=2)))
    results, _ = load_results(results_dir)
    series = prefix_len_series(results)
    wall = series["wall_s"]
    assert set(wall) == {"plait, prefix cache on (4x8, Q16, out 8)", "plait, prefix cache off (4x8, Q16, out 8)",
                         "plait, prefix cache on (2x8, Q16, out 8)"}
    assert wall["plait, prefix cache off (4x8, Q16, out 8)"] == {64: [6.4, 8.0], 128: [12.8, 16.0],
                                                                 256: [25.6, 32.0]}
    assert wall["plait, prefix cache on (2x8, Q16, out 8)"] == {128: [9.0]}
    assert series["prefill_tokens"]["plait, prefix cache on (4x8, Q16, out 8)"][256] == [1024, 1024]
    # one shape: plain labels
    single = prefix_len_series([r for r in results if r["_file"] != "other-shape.json"])
    assert set(single["wall_s"]) == {"plait, prefix cache on", "plait, prefix cache off"}
    assert prefix_len_series([r for r in results if r["benchmark"] == "serve"]) == {}
