"""`plait bench report`: markdown and PNGs from synthetic results JSON (matplotlib needed for the PNGs)."""

from __future__ import annotations

import argparse
import json

import pytest

from plait.bench.plots import add_report_parser, md_table, run_report, write_report
from plait.bench.results import load_results, serve_concurrency, serve_percentile


def _machine(dtype="bfloat16"):
    return {"cpu_count": 2, "cpu_model": "Test CPU", "torch": "2.x", "torch_threads": 2, "dtype": dtype}


def _offline(ts, seqs, plait_tps, hf_tps=None):
    run = lambda tps: {"runs": [{"output_tps": tps}], "median": {"wall_s": 10.0, "output_tps": tps,  # noqa: E731
                                                                 "total_tps": 2 * tps}}
    r = {"benchmark": "offline", "timestamp": ts, "machine": _machine(),
         "config": {"workload": "fixed", "num_prompts": 64, "input_len": 128, "output_len": 128,
                    "max_num_seqs": seqs, "input_len_range": [64, 512]},
         "plait": run(plait_tps)}
    if hf_tps is not None:
        r["hf"] = dict(run(hf_tps), batch_size=seqs, num_prompts=64, dtype="bfloat16")
    return r


def _serve(model, conc, out_tps, scale=1.0):
    r = {"benchmark": "serve", "model": model, "base_url": "http://127.0.0.1:8000", "max_concurrency": conc,
         "request_rate": None, "machine": _machine(None),
         "workload": {"name": "fixed", "num_prompts": 64, "seed": 0, "input_tokens": 8192, "output_len": 128},
         "completed": 64, "failed": 0, "duration_s": 30.0, "request_throughput": 2.0,
         "output_throughput": out_tps, "total_token_throughput": 2 * out_tps}
    for i, m in enumerate(("ttft", "tpot", "itl", "e2el")):
        base = 10.0 * (i + 1) * scale
        r.update({f"mean_{m}_ms": base, f"median_{m}_ms": base, f"p90_{m}_ms": base * 2, f"p99_{m}_ms": base * 3})
    return r


def _latency():
    med = {"ttft_s": 0.1, "prefill_tps": 1280.0, "decode_tps": 40.0, "total_s": 3.3}
    return {"benchmark": "latency", "timestamp": "2026-01-01T00:00:03", "machine": _machine(),
            "config": {"input_len": 128, "output_len": 128}, "plait": {"runs": [med], "median": med}}


def _sweep():
    pts = [{"settings": {"max_num_seqs": s, "max_num_batched_tokens": b}, "output_tps": s * b / 100,
            "total_tps": s * b / 50, "wall_s": 1.0} for s in (16, 32) for b in (256, 512)]
    pts[-1] = {"settings": pts[-1]["settings"], "error": "ValueError: boom"}
    return {"benchmark": "sweep", "metric": "output_tps", "workload_description": "fixed: 4 prompts",
            "params": {"max_num_seqs": [16, 32], "max_num_batched_tokens": [256, 512]}, "points": pts,
            "best": pts[2], "config_file": "results/x.config.json"}


def _write(d, name, payload):
    (d / name).write_text(json.dumps(payload))


@pytest.fixture
def results_dir(tmp_path):
    _write(tmp_path, "offline-a.json", _offline("2026-01-01T00:00:01", 16, 200.0, hf_tps=100.0))
    _write(tmp_path, "offline-b.json", _offline("2026-01-01T00:00:02", 64, 400.0))
    _write(tmp_path, "latency.json", _latency())
    _write(tmp_path, "serve-plait-1.json", _serve("smollm2-135m", 1, 40.0))
    nested = {k: v for k, v in _serve("model.gguf", 8, 120.0, scale=3).items()
              if k not in ("benchmark", "workload", "machine", "base_url", "request_rate", "max_concurrency")}
    _write(tmp_path, "serve-plait-8.json", dict(_serve("smollm2-135m", 8, 250.0, scale=2),
                                                 **{"llama.cpp": dict(nested, parallel=8)}))
    _write(tmp_path, "serve-vllm.json", dict(_serve("model.gguf", 8, 300.0), engine="vllm"))
    _write(tmp_path, "sweep.json", _sweep())
    (tmp_path / "notes.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{not json")
    sub = tmp_path / "sweep-points"
    sub.mkdir()
    _write(sub, "point-000.json", _offline("2026-01-01T00:00:09", 8, 1.0))  # sub-folders are not read
    return tmp_path


def test_report_markdown_and_plots(results_dir):
    pytest.importorskip("matplotlib")
    path = write_report(results_dir)
    assert path == results_dir / "REPORT.md"
    md = path.read_text()
    # offline: one row per engine per run, with the plait/hf ratio
    assert "| offline-a.json | plait | fixed 64x 128/128 | 16 | bfloat16 | 1 | 200.0 | 400.0 | 10.0 | - |" in md
    assert "| offline-a.json | hf | fixed 64x 128/128 | 16 | bfloat16 | 1 | 100.0 | 200.0 | 10.0 | 2.00x |" in md
    assert "| offline-b.json | plait |" in md and "point-000" not in md
    assert "| latency.json | plait | 128/128 | bfloat16 | 2 | 100.0 | 1,280.0 | 40.0 | 3.3 |" in md
    # serve: throughput rows and percentile rows; p50 comes from median_*; the engine field wins over model
    assert "| serve-vllm.json | vllm | fixed 128/128 | 8 | 64/0 | 2.0 | 300.0 | 600.0 |" in md
    assert "| smollm2-135m | 1 | 10.0 | 20.0 | 30.0 | 20.0 | 40.0 | 60.0 | 30.0 | 60.0 | 90.0 | 40.0 | 80.0 | " \
           "120.0 |" in md
    # a baseline nested in a serve JSON (bench serve --baseline llama.cpp) is a system of its own
    assert "| serve-plait-8.json | llama.cpp | fixed 128/128 | 8 | 64/0 | 2.0 | 120.0 | 240.0 |" in md
    assert "| llama.cpp | 8 | 30.0 | 60.0 | 90.0 |" in md
    # sweep table marks the best point and shows the failure
    assert "| **best** 32 | 256 | 81.9 | 163.8 | 1.0 |" in md and "| 32 | 512 | failed | - | - |" in md
    assert "broken.json: unreadable" in md and "notes.json: not a plait benchmark result" in md
    for png in ("throughput_vs_concurrency.png", "serve_latency.png", "offline_throughput.png", "sweep-sweep.png"):
        assert (results_dir / png).stat().st_size > 1000
        assert f"({png})" in md


def test_plots_skip_missing_data(tmp_path):
    pytest.importorskip("matplotlib")
    _write(tmp_path, "latency.json", _latency())
    md = write_report(tmp_path).read_text()
    assert "## Batch-1 latency" in md and "## Serving" not in md and "## Offline" not in md
    assert not list(tmp_path.glob("*.png"))
    assert "serve_latency.png: no serve runs" in md and "offline_throughput.png: no offline runs" in md


def test_cli_entry_no_plots_and_errors(results_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args(["report", str(results_dir), "--no-plots"])
    assert args.func is run_report and run_report(args) == 0
    assert "REPORT.md" in capsys.readouterr().out
    assert not list(results_dir.glob("*.png"))
    with pytest.raises(ValueError, match="no plait benchmark results"):
        write_report(_empty(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        write_report(tmp_path / "missing")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_helpers():
    results, skipped = load_results("/nonexistent-dir")
    assert results == [] and skipped == []
    r = _serve("m", None, 1.0)
    assert serve_concurrency(r) == 64  # uncapped: every prompt at once
    assert serve_percentile(r, "ttft", "p50") == 10.0 and serve_percentile({}, "ttft", "p99") is None
    text = md_table(["name", "n"], [["a|b", 1234.5], ["c", None]])
    assert text.splitlines()[1] == "| --- | ---: |"
    assert "a\\|b" in text and "1,234.5" in text and "| c | - |" in text


def test_a_batch_size_sweep_is_one_line_per_engine():
    from plait.bench.results import offline_shape, offline_workload

    one, many = _offline("t1", 1, 100.0), _offline("t2", 64, 500.0)
    one["config"]["num_prompts"] = 1
    assert offline_workload(one) != offline_workload(many)  # the table keeps the prompt count
    assert offline_shape(one) == offline_shape(many) == "fixed 128/128"
