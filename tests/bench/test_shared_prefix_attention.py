"""The shared-prefix attention benchmark's measurement on a tiny model: same tokens, less KV read with it on."""

import pytest

from plait.bench.shared_prefix_attention import DecodeRun, median_run, plot_decode, run_one
from plait.bench.workloads import shared_prefix_workload


def test_run_one_on_and_off(make_engine):
    llm = make_engine(block_size=8, max_num_seqs=16)
    prompts = shared_prefix_workload(llm.tokenizer.vocab_size, llm.tokenizer.all_special_ids, 1, 6, 64, 5, 6).prompts
    runs = []
    for shared in (True, False):
        llm.engine.runner.shared_prefix_attention = shared
        runs.append(run_one(llm, prompts, 6, shared, 64))
    on, off = runs
    assert on.outputs_digest == off.outputs_digest
    assert on.decode_tokens == off.decode_tokens > 0
    assert 0 < on.kv_mb_per_step < off.kv_mb_per_step
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_plot_decode_draws_on_off_and_llamacpp(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [DecodeRun(p, shared, 1.0, 1.0, tokens, 1.0, 0) for p, shared, tokens in
            ((256, True, 500), (256, False, 480), (1024, True, 400), (1024, False, 300))]
    path = tmp_path / "decode.png"
    plot_decode(runs, {256: {"s_tg": 200.0}, 1024: {"s_tg": 150.0}}, str(path), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_registers_the_benchmark():
    from plait.cli import build_parser

    args = build_parser().parse_args(["bench", "shared-prefix", "--prefix-lens", "64", "--baseline", "llama.cpp"])
    assert args.bench_command == "shared-prefix" and args.prefix_lens == "64" and args.baseline == "llama.cpp"


def test_median_run_and_repeats_flag():
    from plait.cli import build_parser

    runs = [DecodeRun(64, True, 1.0, 1.0, tokens, 1.0, 0) for tokens in (300, 100, 200)]
    assert median_run(runs).decode_tokens == 200
    assert median_run(runs[:2]).decode_tokens == 100  # even count: the lower middle
    args = build_parser().parse_args(["bench", "shared-prefix", "--repeats", "3"])
    assert args.repeats == 3
