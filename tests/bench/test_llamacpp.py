"""The llama.cpp baseline's command lines, output parsing and flag wiring. Nothing here builds or runs llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from plait.bench import llamacpp
from plait.bench.llamacpp import (Paths, batched_bench_command, parse_batched_bench, paths_for, server_command,
                                  server_context_size)
from plait.cli import build_parser

# Recorded from a real run on this project's dev machine (2 cores, AVX-512): llama.cpp from llama-cpp-python
# 0.3.36, `llama-batched-bench -m SmolLM2-135M-Instruct Q4_1 -c 16384 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 64
# -t 2 -tb 2 --output-format md`, its whole stdout (stderr was empty), on a busy shared machine.
RECORDED = """\
llama_batched_bench: n_kv_max = 16384, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   128 |    128 |   64 |  16384 |   69.786 |   117.39 |  141.430 |    57.92 |  211.216 |    77.57 |
"""


def test_batched_bench_command():
    cmd = batched_bench_command("/m/model.gguf", 128, 64, 32, threads=2, binary="/bin/llama-batched-bench")
    assert cmd[0] == "/bin/llama-batched-bench"
    args = dict(zip(cmd[1::2], cmd[2::2]))
    assert args["-m"] == "/m/model.gguf"
    assert (args["-npp"], args["-ntg"], args["-npl"]) == ("128", "64", "32")
    assert args["-c"] == str(32 * (128 + 64))  # every sequence's prompt and output fit, none shared
    assert args["-t"] == args["-tb"] == "2" and args["--output-format"] == "md"
    assert "-pps" not in cmd


def test_batched_bench_command_with_a_shared_prompt():
    cmd = batched_bench_command("/m/model.gguf", 1056, 64, 64, shared_prompt=True)
    args = dict(zip(cmd[1::2], cmd[2::2]))
    assert args["-c"] == str(1056 + 64 * 64)  # the prompt once in one unified cache, then every sequence's output
    assert "-pps" in cmd and "-kvu" in cmd


def test_server_command_is_loopback_with_one_slot_per_client():
    cmd = server_command("/m/model.gguf", 8123, parallel=32, ctx=server_context_size(32, 128, 128), threads=2,
                         binary="/bin/llama-server")
    assert cmd[0] == "/bin/llama-server" and "--cont-batching" in cmd
    flags = {a: b for a, b in zip(cmd, cmd[1:]) if a.startswith("-")}
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8123"
    assert flags["--parallel"] == "32" and flags["-t"] == "2" and flags["-tb"] == "2"
    assert int(flags["-c"]) // 32 >= 128 + 128  # llama-server gives each slot ctx / parallel


def test_parse_recorded_batched_bench_output():
    rows = parse_batched_bench(RECORDED)
    assert len(rows) == 1
    row = rows[0]
    assert (row["pp"], row["tg"], row["b"], row["n_kv"]) == (128, 128, 64, 64 * 256)
    assert all(isinstance(row[k], int) for k in ("pp", "tg", "b", "n_kv"))
    assert row["t"] == pytest.approx(row["t_pp"] + row["t_tg"], abs=0.002)
    assert row["s_tg"] == pytest.approx(row["b"] * row["tg"] / row["t_tg"], rel=0.01)
    assert row["s"] == pytest.approx(row["b"] * (row["pp"] + row["tg"]) / row["t"], rel=0.01)


def test_parse_several_rows_and_ignores_everything_else():
    text = """main: n_kv_max = 4096, n_batch = 2048
|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   128 |    128 |    1 |    256 |    0.108 |  1186.64 |    3.079 |    41.57 |    3.187 |    80.32 |
|   128 |    128 |    2 |    512 |    0.198 |  1295.19 |    5.029 |    50.90 |    5.227 |    97.95 |
llama_perf_context_print:        load time =     123.45 ms
"""
    rows = parse_batched_bench(text)
    assert [r["b"] for r in rows] == [1, 2]
    assert rows[1]["t_tg"] == 5.029 and rows[1]["s"] == 97.95
    assert parse_batched_bench("no table here\n| a | b |") == []


def test_cache_layout_and_no_rebuild_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAIT_CACHE", str(tmp_path))
    paths = paths_for("9.9.9")
    assert paths.root == tmp_path / "llama.cpp" / "9.9.9"
    for p in (paths.server, paths.batched_bench):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    monkeypatch.setattr(llamacpp.subprocess, "run", lambda *a, **k: pytest.fail("must not build"))
    assert llamacpp.ensure_llamacpp("9.9.9") == paths


def test_missing_toolchain_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAIT_CACHE", str(tmp_path))
    monkeypatch.setattr(llamacpp.shutil, "which", lambda name: None)
    with pytest.raises(llamacpp.LlamaCppUnavailable, match="cmake"):
        llamacpp.ensure_llamacpp("9.9.9")


def test_baseline_flags():
    parser = build_parser()
    offline = parser.parse_args(["bench", "offline", "--baseline", "hf,llama.cpp"])
    assert set(offline.baseline.split(",")) == {"hf", "llama.cpp"}
    assert parser.parse_args(["bench", "serve", "--baseline", "llama.cpp"]).baseline == "llama.cpp"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "latency", "--baseline", "llama.cpp"])  # latency has only hf
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "offline", "--baseline", "vllm"])


def test_offline_skips_llamacpp_when_unavailable(monkeypatch, capsys):
    from argparse import Namespace

    from plait.bench import offline
    from plait.bench.workloads import fixed_workload

    def unavailable():
        raise llamacpp.LlamaCppUnavailable("no compiler here")

    monkeypatch.setattr(llamacpp, "ensure_llamacpp", unavailable)
    monkeypatch.setattr("plait.loading.sources.resolve_model", lambda spec: __import__("pathlib").Path("/x.gguf"))
    workload = fixed_workload(4, 100, set(), input_len=8, output_len=4, seed=0)
    llm = Namespace(config=Namespace(max_num_seqs=2))
    assert offline.prepare_llamacpp(Namespace(model=None), llm, workload) is None
    assert "llama.cpp baseline skipped: no compiler here" in capsys.readouterr().err


def test_paths_type():
    p = paths_for()
    assert isinstance(p, Paths) and p.version == llamacpp.LLAMA_CPP_PYTHON_VERSION
    assert p.server.name == "llama-server" and p.batched_bench.name == "llama-batched-bench"


def test_the_baseline_is_the_fastest_format_that_can_be_made(monkeypatch, capsys):
    from plait.bench import offline
    from plait.bench.report import Throughput

    def convert(paths, model, fmt, threads):
        if fmt == "q8_0":
            raise llamacpp.LlamaCppUnavailable("no llama-quantize")
        return Path(f"/cache/model.{fmt}.gguf")

    speed = {"/x.gguf": 100.0, "/cache/model.file.gguf": 100.0, "/cache/model.bf16.gguf": 250.0}
    monkeypatch.setattr(llamacpp, "convert_format", convert)
    monkeypatch.setattr(offline, "run_llamacpp",
                        lambda case: Throughput(1.0, 8, int(speed[case["model"]]), 1, prefill_tokens=8))
    case = {"paths": None, "model": "/x.gguf", "threads": 2, "rows": [], "format": "file", "format_probe": []}
    picked = offline.pick_llamacpp_format(case, "file,bf16,q8_0")
    assert picked["format"] == "bf16" and picked["model"] == "/cache/model.bf16.gguf"
    assert [p["format"] for p in picked["format_probe"]] == ["file", "bf16"]
    assert "llama.cpp format q8_0 skipped: no llama-quantize" in capsys.readouterr().err
    untouched = dict(case, format_probe=[])
    assert offline.pick_llamacpp_format(untouched, "file") is untouched  # nothing to compare: no probe pass


def test_convert_format_checks_its_format(tmp_path):
    paths = paths_for(cache=tmp_path)
    assert llamacpp.convert_format(paths, "/m/model.gguf", "file") == Path("/m/model.gguf")
    with pytest.raises(ValueError, match="format"):
        llamacpp.convert_format(paths, "/m/model.gguf", "q4_k")
