"""A continuation (an earlier request's prompt + output as the new prompt) reuses every full block of both: the
blocks output tokens filled are committed to the prefix cache like prompt blocks."""

import pytest

from plait import SamplingParams
from tests.engine.test_llm import prompts

GREEDY = SamplingParams(max_tokens=37, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("prompt_len", [30, 32, 45])
def test_prompt_plus_output_is_served_from_the_cache(make_engine, prompt_len):
    llm = make_engine(block_size=16)
    prompt = prompts(1, seed=prompt_len, lo=prompt_len, hi=prompt_len)[0]
    first = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    continuation = prompt + first.outputs[0].token_ids
    # The first request computed KV for every token but its last sampled one, and every full block of those is
    # cached; a prefix hit never covers the continuation's last token (it must be computed for logits).
    full_blocks = (len(continuation) - 1) // 16
    hits = llm.stats().prefix_cache_hits
    again = llm.generate([continuation], GREEDY, use_tqdm=False)[0]
    assert again.num_cached_tokens == full_blocks * 16
    assert llm.stats().prefix_cache_hits - hits == full_blocks * 16
    plain = make_engine(block_size=16, enable_prefix_caching=False)
    assert again.outputs[0].token_ids == plain.generate([continuation], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert llm.engine.scheduler.kv.all_blocks_free()
