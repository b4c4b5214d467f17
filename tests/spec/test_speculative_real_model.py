"""The default model with batch-invariant numerics: greedy outputs with speculation are
token-identical to plain decoding on copy-heavy prompts, alone and in a batch, and drafts do get accepted."""

from __future__ import annotations

import pytest

from plait import LLM, SamplingParams
from plait.bench.spec_workloads import spec_workload


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_default_model_greedy_identical_with_speculation(dtype):
    # n-gram only here (the suffix drafter's equivalence is covered on the tiny model): this runs in CI. Both
    # dtypes explicitly: `auto` is bf16 on a CPU with native bf16 and fp32 elsewhere.
    llm = LLM(dtype=dtype, batch_invariant=True, speculative_config={"method": "ngram", "num_speculative_tokens": 4},
              kv_cache_memory=64 << 20)
    prompts = spec_workload("copy", 4, llm.tokenizer, seed=3)
    plain = SamplingParams(max_tokens=40, temperature=0, speculative=False)
    spec = SamplingParams(max_tokens=40, temperature=0)
    want = [o.outputs[0].token_ids for o in llm.generate(prompts, plain, use_tqdm=False)]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, spec, use_tqdm=False)]
    assert got == want
    alone = llm.generate(prompts[:1], spec, use_tqdm=False)[0].outputs[0].token_ids
    assert alone == want[0]
    stats = llm.stats().spec
    assert stats.num_accepted_tokens > 0
    assert llm.engine.scheduler.kv.all_blocks_free()
