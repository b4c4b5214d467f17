"""The KV pool's policies through LLM on the tiny model: "reuse" (the default) writes only about twice the blocks
requests use at once, "fill" writes the whole pool; both give the same tokens, keep prefix hits for a prompt
that comes back, and return every block."""

import pytest

from plait import SamplingParams
from plait.config import EngineConfig
from tests.engine.test_llm import assert_no_leak, prompts, tokens

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def written_blocks(llm) -> int:
    pool = llm.engine.scheduler.kv.pool
    return pool.num_blocks - pool.num_fresh


def run_rounds(llm, rounds: int = 6, per_round: int = 4) -> list:
    outs = []
    for r in range(rounds):  # distinct prompts every round: each round's freed blocks are cache entries
        outs += tokens(llm.generate(prompts(per_round, seed=100 + r, lo=40, hi=60), GREEDY, use_tqdm=False))
    return outs


def test_reuse_writes_what_requests_use_and_fill_writes_the_pool(make_engine):
    reuse = make_engine(block_size=16, kv_cache_memory=1 << 20)  # 128 blocks of the tiny model
    fill = make_engine(block_size=16, kv_cache_memory=1 << 20, kv_pool_policy="fill")
    pool = reuse.engine.scheduler.kv.pool
    assert pool.policy == "reuse" and fill.engine.scheduler.kv.pool.policy == "fill"
    assert pool.num_blocks == 128 and pool.cache_floor == 16
    assert run_rounds(reuse) == run_rounds(fill)  # overwritten blocks are never read stale
    per_round = 4 * 5  # 4 requests of at most 66 tokens: 5 blocks each
    assert written_blocks(reuse) <= per_round + max(per_round, pool.cache_floor)
    assert written_blocks(fill) >= 6 * 4 * 3  # every block computed so far (46-66 tokens: 3-5 blocks each)
    for llm in (reuse, fill):
        assert_no_leak(llm)


def test_reuse_keeps_a_returning_prompt_cached(make_engine):
    llm = make_engine(block_size=16)
    prompt = prompts(1, seed=5, lo=50, hi=50)[0]
    first = llm.generate([prompt], GREEDY, use_tqdm=False)
    run_rounds(llm, rounds=2)  # other traffic in between, within the cache's share
    kv = llm.engine.scheduler.kv
    assert kv.match_prefix(prompt).num_tokens == 48
    assert tokens(llm.generate([prompt], GREEDY, use_tqdm=False)) == tokens(first)
    assert_no_leak(llm)


def test_kv_pool_policy_is_validated():
    with pytest.raises(ValueError, match="kv_pool_policy must be one of reuse, fill"):
        EngineConfig(kv_pool_policy="lru")
