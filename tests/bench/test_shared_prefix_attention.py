"""The shared-prefix attention benchmark's measurement on a tiny model: same tokens, less KV read with it on."""

from plait.bench.shared_prefix_attention import run_one
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
