"""Fast tests for plait.bench: seeded workloads, metric arithmetic, and tiny end-to-end runs (no speed asserted)."""

from __future__ import annotations

import json

import pytest

from plait.bench.latency import LatencyRun, run_latency
from plait.bench.offline import run_offline
from plait.bench.report import Throughput, median, ratios, table
from plait.bench.workloads import fixed_workload, make_workload, random_workload
from plait.cli import build_parser

SPECIAL = {0, 1, 2, 5}


def test_random_workload_is_reproducible_and_in_range():
    a = random_workload(50, vocab_size=100, special_ids=SPECIAL, input_len_range=(3, 9), output_len=7, seed=1)
    b = random_workload(50, vocab_size=100, special_ids=SPECIAL, input_len_range=(3, 9), output_len=7, seed=1)
    c = random_workload(50, vocab_size=100, special_ids=SPECIAL, input_len_range=(3, 9), output_len=7, seed=2)
    assert a.prompts == b.prompts and a.prompts != c.prompts
    assert all(3 <= len(p) <= 9 for p in a.prompts)
    assert {len(p) for p in a.prompts} == set(range(3, 10))  # 50 draws cover every length
    assert a.output_lens == [7] * 50
    assert all(0 <= t < 100 and t not in SPECIAL for p in a.prompts for t in p)
    assert a.prompt_tokens == sum(len(p) for p in a.prompts) and a.output_tokens == 350


def test_fixed_workload_and_dispatch():
    w = make_workload("fixed", 4, vocab_size=30, special_ids=SPECIAL, input_len=12, output_len=5, seed=0)
    assert w == fixed_workload(4, 30, SPECIAL, 12, 5, seed=0)
    assert [len(p) for p in w.prompts] == [12] * 4 and w.output_lens == [5] * 4
    assert w.subset(2).prompts == w.prompts[:2]
    assert "fixed: 4 prompts, input 12-12" in w.describe()
    with pytest.raises(ValueError):
        make_workload("nope", 1, 30)
    with pytest.raises(ValueError):
        random_workload(1, 30, input_len_range=(9, 3))
    with pytest.raises(ValueError):
        fixed_workload(1, 3, special_ids={0, 1, 2})


def test_metric_arithmetic():
    t = Throughput(wall_s=2.0, prompt_tokens=300, output_tokens=100, num_requests=4)
    assert t.output_tps == 50 and t.total_tps == 200 and t.requests_per_s == 2
    assert t.to_dict()["output_tps"] == 50
    run = LatencyRun(input_len=128, output_tokens=11, ttft_s=0.5, total_s=1.5)
    assert run.prefill_tps == 256 and run.decode_tps == 10
    assert median([3.0, 1.0, 2.0]) == 2.0 and ratios([4.0, 9.0], [2.0, 3.0]) == [2.0, 3.0]
    text = table(["engine", "tok/s"], [["plait", 1234.5], ["hf", 7.0]])
    assert "1,234.5" in text and text.splitlines()[0].startswith("engine")


def _args(*argv):
    return build_parser().parse_args(list(argv))


def test_offline_end_to_end_on_tiny_model(make_engine, tmp_path, capsys):
    llm = make_engine(max_num_seqs=4)
    out = tmp_path / "offline.json"
    args = _args("bench", "offline", "--workload", "fixed", "--num-prompts", "6", "--input-len", "10",
                 "--output-len", "5", "--repeats", "2", "--no-tqdm", "--output", str(out))
    result = run_offline(args, llm=llm)
    saved = json.loads(out.read_text())
    assert saved["config"]["num_prompts"] == 6 and saved["machine"]["cpu_count"] >= 1
    assert saved["machine"]["dtype"] == "float32"
    assert len(saved["plait"]["runs"]) == 2
    for run in saved["plait"]["runs"]:
        assert run["output_tokens"] == 30 and run["prompt_tokens"] == 60
        assert run["prefill_tokens"] == 60  # the prefix cache was reset between repeats
        assert run["output_tps"] == pytest.approx(30 / run["wall_s"])
    assert result["plait"]["median"]["output_tps"] > 0
    assert "plait" in capsys.readouterr().out
    assert llm.engine.scheduler.kv.all_blocks_free()


def _tiny_hf_model():
    transformers = pytest.importorskip("transformers")
    import torch

    from plait.bench.hf_baseline import prepare_greedy

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                   eos_token_id=2)
    return prepare_greedy(transformers.LlamaForCausalLM(cfg))


def test_hf_batches_match_requested_lengths():
    from plait.bench.hf_baseline import hf_time_single, run_hf_batches

    model = _tiny_hf_model()
    w = random_workload(5, vocab_size=64, special_ids={2}, input_len_range=(2, 8), output_len=6, seed=3)
    run = run_hf_batches(model, w, batch_size=2, progress=True)
    assert run.output_tokens == 30 and run.prompt_tokens == w.prompt_tokens and run.num_requests == 5
    ttft, total, tokens = hf_time_single(model, w.prompts[0], 6)
    assert tokens == 6 and 0 < ttft <= total


def test_latency_end_to_end_with_tiny_baseline(make_engine, tmp_path):
    llm = make_engine()
    out = tmp_path / "latency.json"
    args = _args("bench", "latency", "--input-len", "8", "--output-len", "4", "--repeats", "2",
                 "--baseline", "hf", "--no-tqdm", "--output", str(out))
    # The prompts come from the real tokenizer's vocabulary, so the tiny HF model needs that vocabulary size.
    transformers = pytest.importorskip("transformers")
    from plait.bench.hf_baseline import prepare_greedy

    cfg = transformers.LlamaConfig(vocab_size=llm.tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=64, eos_token_id=2)
    result = run_latency(args, llm=llm, hf_model=prepare_greedy(transformers.LlamaForCausalLM(cfg)))
    saved = json.loads(out.read_text())
    assert [r["output_tokens"] for r in saved["plait"]["runs"]] == [4, 4]
    assert [r["output_tokens"] for r in saved["hf"]["runs"]] == [4, 4]
    assert len(saved["ratio"]["per_pair"]["decode_tps"]) == 2
    assert result["plait"]["median"]["ttft_s"] > 0
