"""Roofline arithmetic on given numbers; the measurement only runs tiny and is never asserted for speed."""

from __future__ import annotations

import argparse
import json

import pytest

from plait.bench.roofline import (add_roofline_parser, bandwidth_fraction, compute_fraction, dtype_bytes,
                                  fraction_of_ceiling, machine_ceilings, model_params, per_token_costs,
                                  run_roofline, token_ceilings)
from tests.helpers import tiny_config

CEILINGS = {"gemm_gflops": {"float32": 200.0, "bfloat16": 400.0}, "bandwidth_gbs": 40.0}


def test_fractions_by_hand():
    # 100 tok/s x 0.2 GB per token = 20 GB/s of 40 GB/s
    assert bandwidth_fraction(100, 0.2e9, 40.0) == pytest.approx(0.5)
    # 1,000 tok/s x 0.1 GFLOP per token = 100 GFLOP/s of 400
    assert compute_fraction(1000, 0.1e9, 400.0) == pytest.approx(0.25)


def test_model_params_tied_and_untied():
    cfg = tiny_config("llama", vocab_size=1000)  # tied; hidden 64, inter 128, 2 layers, 4 heads x 16, 2 kv heads
    attn = 64 * 64 + 2 * 64 * 32 + 64 * 64
    layer = attn + 3 * 64 * 128 + 2 * 64
    body = 2 * layer + 64
    p = model_params(cfg)
    assert p == {"total": body + 64_000, "per_token": body + 64_000, "embedding": 64_000, "layers": 2 * layer}
    untied = model_params(tiny_config("llama", vocab_size=1000, tie_word_embeddings=False))
    assert untied["total"] == body + 2 * 64_000 and untied["per_token"] == body + 64_000
    qwen = model_params(tiny_config("qwen3", vocab_size=1000))  # untied, q/k norms
    assert qwen["layers"] == 2 * (layer + 2 * 16)
    costs = per_token_costs(cfg, "bfloat16")
    assert costs["bytes_per_token"] == 2 * p["per_token"] and costs["flops_per_token"] == 2 * p["per_token"]
    assert per_token_costs(cfg, "float32")["bytes_per_token"] == 4 * p["per_token"]
    assert per_token_costs(cfg, bytes_per_param=0.5)["bytes_per_token"] == p["per_token"] / 2
    assert dtype_bytes("torch.bfloat16") == 2
    with pytest.raises(ValueError):
        dtype_bytes("float8")


def test_smollm2_shape_matches_its_name():
    cfg = tiny_config("llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64)
    assert model_params(cfg)["total"] == 134_515_008  # SmolLM2-135M
    ceilings = token_ceilings(per_token_costs(cfg, "bfloat16"), {"gemm_gflops": {"bfloat16": 420.0},
                                                                 "bandwidth_gbs": 36.0}, "bfloat16")
    assert ceilings["decode_batch1"] == pytest.approx(36e9 / (2 * 134_515_008))  # ~134 tok/s, as design.md says
    assert ceilings["large_batch"] == pytest.approx(420e9 / (2 * 134_515_008))


def test_fraction_of_latency_offline_and_serve_results():
    latency = {"benchmark": "latency", "machine": {"dtype": "bfloat16"},
               "plait": {"runs": [], "median": {"decode_tps": 50.0, "prefill_tps": 1000.0}},
               "hf": {"runs": [], "median": {"decode_tps": 25.0, "prefill_tps": float("nan")}},
               "ratio": {"per_pair": {}, "median": {"decode_tps": 2.0}}}  # not an engine
    f = fraction_of_ceiling(latency, model_bytes_per_token=0.4e9, flops_per_token=0.2e9, ceilings=CEILINGS)
    assert f["dtype"] == "bfloat16"
    rows = {(r["engine"], r["metric"]): r for r in f["rows"]}
    assert set(rows) == {("plait", "decode tok/s"), ("plait", "prefill tok/s"), ("hf", "decode tok/s")}  # NaN dropped
    decode = rows[("plait", "decode tok/s")]
    assert decode["bound"] == "bandwidth" and decode["fraction"] == pytest.approx(50 * 0.4e9 / 40e9)
    assert decode["ceiling_tokens_per_s"] == pytest.approx(100.0)
    prefill = rows[("plait", "prefill tok/s")]
    assert prefill["bound"] == "compute" and prefill["fraction"] == pytest.approx(1000 * 0.2e9 / 400e9)
    assert prefill["ceiling_tokens_per_s"] == pytest.approx(2000.0)

    offline = {"benchmark": "offline", "machine": {"dtype": "float32"},
               "plait": {"runs": [], "median": {"total_tps": 300.0, "output_tps": 150.0}}}
    (row,) = fraction_of_ceiling(offline, 0.4e9, 0.2e9, CEILINGS)["rows"]
    assert row["fraction"] == pytest.approx(300 * 0.2e9 / 200e9)  # float32 GEMM ceiling
    # an explicit dtype wins; an unmeasured one falls back to float32
    assert fraction_of_ceiling(offline, 0.4e9, 0.2e9, CEILINGS, dtype="bfloat16")["rows"][0]["fraction"] == \
        pytest.approx(0.15)
    assert fraction_of_ceiling(offline, 0.4e9, 0.2e9, CEILINGS, dtype="float16")["dtype"] == "float32"

    serve = {"benchmark": "serve", "model": "m", "max_concurrency": 1, "output_throughput": 20.0,
             "total_token_throughput": 40.0}
    (row,) = fraction_of_ceiling(serve, 0.4e9, 0.2e9, CEILINGS)["rows"]
    assert row["bound"] == "bandwidth" and row["fraction"] == pytest.approx(0.2)
    serve["max_concurrency"] = 32
    (row,) = fraction_of_ceiling(serve, 0.4e9, 0.2e9, CEILINGS)["rows"]
    assert row["bound"] == "compute" and row["tokens_per_s"] == 40.0
    serve["llama.cpp"] = {"parallel": 32, "output_throughput": 10.0, "total_token_throughput": 20.0}
    rows = fraction_of_ceiling(serve, 0.4e9, 0.2e9, CEILINGS)["rows"]
    assert [(r["engine"], r["tokens_per_s"]) for r in rows] == [("m", 40.0), ("llama.cpp", 20.0)]
    assert fraction_of_ceiling({"benchmark": "sweep"}, 1, 1, CEILINGS)["rows"] == []


def test_machine_ceilings_tiny_run_has_every_key():
    c = machine_ceilings(gemm_n=64, bandwidth_bytes=1 << 20, repeats=1)
    assert set(c["gemm_gflops"]) | set(c.get("errors", {})) == {"float32", "bfloat16"}
    assert c["gemm_gflops"]["float32"] > 0 and c["bandwidth_gbs"] > 0  # positive, no speed asserted
    assert c["method"]["gemm_n"] == 64


def test_cli_with_given_ceilings_and_results(tmp_path, capsys, monkeypatch):
    import plait.bench.roofline as roofline

    monkeypatch.setattr(roofline, "model_config_for", lambda spec: tiny_config("llama", vocab_size=1000))
    (tmp_path / "ceil.json").write_text(json.dumps({"ceilings": CEILINGS}))
    res = tmp_path / "results"
    res.mkdir()
    (res / "lat.json").write_text(json.dumps({"benchmark": "latency", "machine": {"dtype": "bfloat16"},
                                              "config": {"engine": {"model": None}},
                                              "plait": {"runs": [], "median": {"decode_tps": 50.0,
                                                                               "prefill_tps": 900.0}}}))
    parser = argparse.ArgumentParser()
    add_roofline_parser(parser.add_subparsers(dest="bench_command"))
    out = tmp_path / "roof.json"
    args = parser.parse_args(["roofline", "--ceilings", str(tmp_path / "ceil.json"), "--results", str(res),
                              "-o", str(out)])
    assert args.func is run_roofline and run_roofline(args) == 0
    text = capsys.readouterr().out
    assert "GEMM bfloat16 (GFLOP/s)" in text and "decode tok/s" in text and "%" in text
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "roofline" and saved["fractions"][0]["rows"][0]["engine"] == "plait"
