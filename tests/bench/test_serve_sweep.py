"""`bench serve --concurrency A,B --repeats R`: flag parsing, the per-concurrency JSON from a stub load (no server
runs), llama-server wiring and peak RSS (VmHWM). No speed is asserted: the stub's numbers are made up."""

from __future__ import annotations

import contextlib
import json
import os
import resource

import pytest

from plait.bench import llamacpp
from plait.bench.serve import RequestResult, parse_concurrency_list, parse_goodput, read_vmhwm_kib, summarize
from plait.bench.serve_sweep import (BaselineServer, llamacpp_baseline, median_summary, pair_ratios,
                                     run_serve_sweep)
from plait.bench.workloads import fixed_workload
from plait.cli import build_parser

BASELINE_URL = "http://127.0.0.1:9999"


def _args(*argv):
    return build_parser().parse_args(["bench", "serve", *argv])


# ------------------------------------------------------------------------------------------- parsing


def test_concurrency_list_parsing():
    assert parse_concurrency_list("1,8,32") == [1, 8, 32]
    assert parse_concurrency_list(" 32, 1 ") == [32, 1]  # the order given is the order run
    assert parse_concurrency_list("4") == [4]
    for bad, why in (("1,0", "below 1"), ("-2", "below 1"), ("1,x", "not an integer"), ("", "not an integer"),
                     ("1,,8", "not an integer"), ("2.5", "not an integer"), ("8,8", "given twice")):
        with pytest.raises(ValueError, match=why):
            parse_concurrency_list(bad)


def test_concurrency_flags():
    args = _args()
    assert args.concurrency is None and args.repeats == 1  # default: one run, every request at once
    assert _args("--concurrency", "1,8,32").concurrency == [1, 8, 32]
    assert _args("--max-concurrency", "4").concurrency == [4]  # the one-value alias, stored in the same place
    assert _args("--repeats", "3").repeats == 3
    for argv in (["--concurrency", "1,0"], ["--concurrency", "a"], ["--max-concurrency", "1,2"],
                 ["--max-concurrency", "0"], ["--concurrency", "1", "--max-concurrency", "2"], ["--repeats", "0"],
                 ["--repeats", "two"]):
        with pytest.raises(SystemExit):
            _args(*argv)


def test_concurrency_flag_error_message(capsys):
    with pytest.raises(SystemExit):
        _args("--concurrency", "1,8,0")
    err = capsys.readouterr().err
    assert "--concurrency" in err and "0 is below 1" in err


# -------------------------------------------------------------------------------------------- stubs


def _workload(seed):
    return fixed_workload(3, 100, set(), input_len=4, output_len=3, seed=seed)


def _stub_load(calls):
    """A load that records its calls; the baseline takes twice as long, so every ratio is exactly 2x / 0.5x."""

    def load(base_url, workload, model, concurrency):
        calls.append((base_url, workload.seed, concurrency, model))
        slow = 2.0 if base_url == BASELINE_URL else 1.0
        results = [RequestResult(len(p), ok=True, output_tokens=n, ttft=0.1 * slow,
                                 latency=(0.1 + 0.05 * (n - 1)) * slow)
                   for p, n in zip(workload.prompts, workload.output_lens)]
        return summarize(results, duration=slow * (1 + workload.seed % 2), slos=parse_goodput(["ttft:150"]))

    return load


def _stub_baseline(started):
    @contextlib.contextmanager
    def start(parallel, workloads):
        started.append((parallel, [w.seed for w in workloads]))
        # this process stands in for llama-server, so its VmHWM is readable
        yield BaselineServer("llama.cpp", BASELINE_URL, "base-model", os.getpid(),
                             {"version": "test", "parallel": parallel})

    return start


# ------------------------------------------------------------------------------------ the sweep's JSON


def test_sweep_json_has_one_entry_per_concurrency(capsys):
    args = _args("--concurrency", "1,4", "--repeats", "2", "--baseline", "llama.cpp", "--seed", "10",
                 "--server-pid", str(os.getpid()), "--goodput", "ttft:150")
    calls, started = [], []
    payload = run_serve_sweep(args, "m", _workload, load=_stub_load(calls), start_baseline=_stub_baseline(started))
    # one llama-server per concurrency, --parallel = that concurrency, told every prompt it will see
    assert started == [(1, [10, 11]), (4, [12, 13])]
    # A B A B: server then baseline on the same prompts (seed), a fresh seed per repeat
    assert calls == [("http://127.0.0.1:8000", 10, 1, "m"), (BASELINE_URL, 10, 1, "base-model"),
                     ("http://127.0.0.1:8000", 11, 1, "m"), (BASELINE_URL, 11, 1, "base-model"),
                     ("http://127.0.0.1:8000", 12, 4, "m"), (BASELINE_URL, 12, 4, "base-model"),
                     ("http://127.0.0.1:8000", 13, 4, "m"), (BASELINE_URL, 13, 4, "base-model")]
    payload = json.loads(json.dumps(payload))  # what is saved must survive JSON
    assert payload["benchmark"] == "serve" and payload["concurrencies"] == [1, 4] and payload["repeats"] == 2
    assert payload["workload"]["seed"] == 10 and payload["workload"]["num_prompts"] == 3
    assert "completed" not in payload and "llama.cpp" not in payload  # several concurrencies: no top-level copy
    assert [e["max_concurrency"] for e in payload["results"]] == [1, 4]
    for entry, seeds in zip(payload["results"], ([10, 11], [12, 13])):
        assert entry["seeds"] == seeds
        assert len(entry["runs"]) == 2 and len(entry["llama.cpp"]["runs"]) == 2
        assert entry["completed"] == 3 and isinstance(entry["completed"], int)  # medians of counts stay counts
        assert entry["total_output_tokens"] == 9
        # durations 1 and 2 s (seed parity): the median of 9 and 4.5 tok/s
        assert entry["output_throughput"] == pytest.approx((9 + 4.5) / 2)
        assert entry["good_requests"] == 3 and entry["goodput_slos_ms"] == {"ttft": 150.0}
        assert entry["llama.cpp"]["good_requests"] == 0  # its TTFT (200 ms) misses the SLO
        assert entry["llama.cpp"]["version"] == "test" and entry["llama.cpp"]["parallel"] == entry["max_concurrency"]
        ratio = entry["ratio_llama.cpp"]
        assert ratio["output_throughput_per_pair"] == pytest.approx([2.0, 2.0])
        assert ratio["p99_tpot_ms_per_pair"] == pytest.approx([0.5, 0.5])
        assert ratio["output_throughput"] == pytest.approx(2.0) and ratio["p99_tpot_ms"] == pytest.approx(0.5)
        if os.path.exists(f"/proc/{os.getpid()}/status"):
            for rss in (entry["server_peak_rss"], entry["llama.cpp"]["peak_rss"]):
                assert rss["kib"] > 0 and rss["pid"] == os.getpid() and rss["mib"] == rss["kib"] / 1024
    out = capsys.readouterr().out
    table = out[out.index("one row per concurrency"):].splitlines()
    header = table[1]
    assert "goodput req/s" in header and "llama.cpp tok/s" in header and "tok/s ratio" in header
    assert table[3].split()[0] == "1" and table[4].split()[0] == "4"  # one row per concurrency
    assert "2.00x" in table[3] and "0.50x" in table[3]
    assert "per pair: output tok/s 2.00x 2.00x" in out


def test_one_concurrency_keeps_the_one_run_format(capsys):
    args = _args("--max-concurrency", "2")
    calls = []
    payload = run_serve_sweep(args, "m", _workload, load=_stub_load(calls))
    assert calls == [("http://127.0.0.1:8000", 0, 2, "m")]  # no baseline asked: none started
    (entry,) = payload["results"]
    assert payload["concurrencies"] == [2] and entry["seeds"] == [0]
    # the entry mirrored at the top level, as `bench serve` wrote before the sweep existed
    assert payload["max_concurrency"] == 2 and payload["completed"] == 3
    assert payload["output_throughput"] == entry["output_throughput"] == pytest.approx(9.0)
    assert "runs" not in payload and "ratio_llama.cpp" not in entry and "server_peak_rss" not in entry
    out = capsys.readouterr().out
    assert "completed / failed" in out and "TPOT" in out  # a single run still prints vLLM's full tables


def test_unavailable_baseline_leaves_the_server_runs():
    args = _args("--concurrency", "1,2", "--baseline", "llama.cpp")
    calls = []
    payload = run_serve_sweep(args, "m", _workload, load=_stub_load(calls),
                              start_baseline=lambda parallel, workloads: contextlib.nullcontext(None))
    assert [c[0] for c in calls] == ["http://127.0.0.1:8000"] * 2
    assert all("llama.cpp" not in e and "ratio_llama.cpp" not in e for e in payload["results"])


def test_uncapped_concurrency_runs_every_request_at_once():
    calls, started = [], []
    payload = run_serve_sweep(_args("--baseline", "llama.cpp"), "m", _workload, load=_stub_load(calls),
                              start_baseline=_stub_baseline(started))
    assert payload["concurrencies"] == [None] and payload["results"][0]["max_concurrency"] is None
    assert started == [(3, [0])]  # llama-server gets a slot per request
    assert calls[0][2] is None


def test_median_summary_and_pair_ratios():
    runs = [{"completed": 3, "failed": 0, "output_throughput": 10.0, "p99_tpot_ms": None, "errors": ["a"],
             "goodput_slos_ms": {"ttft": 1.0}},
            {"completed": 2, "failed": 1, "output_throughput": 30.0, "p99_tpot_ms": 5.0, "errors": ["b"],
             "goodput_slos_ms": {"ttft": 1.0}}]
    m = median_summary(runs)
    assert m["completed"] == 2 and isinstance(m["completed"], int)  # the lower median keeps a count whole
    assert m["output_throughput"] == 20.0
    assert m["p99_tpot_ms"] == 5.0  # a run without the metric is left out, not counted as 0
    assert m["errors"] == ["a", "b"] and m["goodput_slos_ms"] == {"ttft": 1.0}
    assert median_summary(runs[:1]) == runs[0]  # one run is its own median
    r = pair_ratios(runs, [{"output_throughput": 5.0, "p99_tpot_ms": 10.0},
                           {"output_throughput": 0.0, "p99_tpot_ms": 10.0}])
    assert r["output_throughput_per_pair"] == [2.0, None]  # no division by a failed baseline run
    assert r["output_throughput"] == 2.0
    assert r["p99_tpot_ms_per_pair"] == [None, 0.5] and r["p99_tpot_ms"] == 0.5


# ------------------------------------------------------------------------------- llama-server and RSS


def test_vmhwm_of_this_process(tmp_path):
    if not os.path.exists(f"/proc/{os.getpid()}/status"):
        pytest.skip("no /proc on this system")
    kib = read_vmhwm_kib(os.getpid())
    assert kib > 0
    # the same peak getrusage reports (both KiB on Linux); loosely, since memory can grow between the two reads
    assert 0.5 < kib / resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 2
    fake = tmp_path / "123"
    fake.mkdir()
    (fake / "status").write_text("Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n")
    assert read_vmhwm_kib(123, proc=str(tmp_path)) == 2048
    (fake / "status").write_text("Name:\tkthread\n")  # kernel threads have no memory lines
    assert read_vmhwm_kib(123, proc=str(tmp_path)) is None
    with pytest.raises(OSError):
        read_vmhwm_kib(456, proc=str(tmp_path))


def test_llamacpp_baseline_starts_one_server_per_concurrency(monkeypatch, tmp_path, capsys):
    from pathlib import Path

    launched = []

    @contextlib.contextmanager
    def fake_server(paths, model, parallel, ctx, threads=2):
        launched.append((parallel, ctx, threads))
        yield llamacpp.LlamaServer("http://127.0.0.1:4321", 777)

    paths = llamacpp.paths_for("9.9.9", cache=tmp_path)
    monkeypatch.setattr("plait.loading.sources.resolve_model", lambda spec: Path("/m/model.gguf"))
    monkeypatch.setattr(llamacpp, "ensure_llamacpp", lambda: paths)
    monkeypatch.setattr(llamacpp, "llama_server", fake_server)
    monkeypatch.setattr("plait.bench.serve._served_model", lambda args, url=None: "served")
    workloads = [fixed_workload(2, 100, set(), input_len=6, output_len=3, seed=0),
                 fixed_workload(2, 100, set(), input_len=9, output_len=5, seed=1)]
    with llamacpp_baseline(_args(), 8, workloads) as server:
        assert server == BaselineServer("llama.cpp", "http://127.0.0.1:4321", "served", 777,
                                        {"version": "9.9.9", "model": "/m/model.gguf", "parallel": 8,
                                         "ctx_size": llamacpp.server_context_size(8, 9, 5), "threads": 2})
    assert launched == [(8, llamacpp.server_context_size(8, 9, 5), 2)]  # sized for the longest prompt and output
    assert "pid 777" in capsys.readouterr().out

    def unavailable():
        raise llamacpp.LlamaCppUnavailable("no compiler here")

    monkeypatch.setattr(llamacpp, "ensure_llamacpp", unavailable)
    with llamacpp_baseline(_args(), 8, workloads) as server:
        assert server is None
    assert "llama.cpp baseline skipped: no compiler here" in capsys.readouterr().err
