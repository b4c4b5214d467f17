"""Prefix holds through the public API on a tiny model: a held prefix survives eviction pressure that takes an
unheld one (prefix-cache hit counts), release and reset free the pool, bounds raise ValueError."""

import asyncio

import pytest

from plait import BackgroundLLM, SamplingParams
from plait.engine.async_llm import AsyncLLM
from tests.engine.test_llm import prompts
from tests.helpers import wait_kv_free

BLOCK_BYTES = 16 * 512  # block_size 16 x (K + V, 2 layers, 2 KV heads, head_dim 16, fp32)
SMALL_POOL = dict(block_size=16, kv_cache_memory=40 * BLOCK_BYTES)
GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def pressure():
    """8 prompts of 100 distinct tokens: 56 blocks, more than the 40-block pool holds."""
    return prompts(8, seed=99, lo=100, hi=100)


def cached_tokens(llm, prompt):
    return llm.generate([prompt], GREEDY, use_tqdm=False)[0].num_cached_tokens


def test_held_prefix_survives_pressure_unheld_one_does_not(make_engine):
    llm = make_engine(**SMALL_POOL)
    assert llm.engine.scheduler.kv.num_blocks == 40
    held, unheld = prompts(2, seed=7, lo=64, hi=64)
    handle = llm.hold_prefix(held)  # computes it: nothing was cached
    assert handle.num_tokens == 64 and llm.engine.scheduler.kv.holds.num_held_blocks == 4
    llm.generate([unheld], GREEDY, use_tqdm=False)  # cached, not held
    llm.generate(pressure(), GREEDY, use_tqdm=False)
    hits = llm.stats().prefix_cache_hits
    suffix = [11, 12, 13]
    assert cached_tokens(llm, held + suffix) == 64
    assert cached_tokens(llm, unheld + suffix) == 0
    assert llm.stats().prefix_cache_hits - hits == 64
    plain = make_engine(enable_prefix_caching=False)
    expected = plain.generate([held + suffix], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert llm.generate([held + suffix], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected
    handle.release()
    handle.release()  # idempotent
    assert llm.engine.scheduler.kv.all_blocks_free()
    llm.generate(pressure(), GREEDY, use_tqdm=False)
    assert cached_tokens(llm, held + suffix) == 0  # evictable again after release


def test_a_cached_prefix_is_held_without_computing_and_partial_tail_is_not_held(make_engine):
    llm = make_engine(**SMALL_POOL)
    prefix = prompts(1, seed=3, lo=40, hi=40)[0]
    llm.generate([prefix], GREEDY, use_tqdm=False)
    computed = llm.stats().prompt_tokens
    with llm.hold_prefix(prefix) as handle:
        assert handle.num_tokens == 32  # 2 full blocks; the 8-token tail is never held
        assert llm.stats().prompt_tokens == computed
    assert handle.released and llm.engine.scheduler.kv.all_blocks_free()


def test_reset_drops_holds_and_bounds_raise(make_engine):
    llm = make_engine(**SMALL_POOL)
    prefix = prompts(1, seed=5, lo=48, hi=48)[0]
    handle = llm.hold_prefix(prefix)
    llm.reset_prefix_cache()
    assert llm.engine.scheduler.kv.all_blocks_free()
    assert cached_tokens(llm, prefix + [5]) == 0  # nothing computed before the reset is hit
    handle.release()  # dropped by the reset: nothing happens
    assert llm.engine.scheduler.kv.all_blocks_free()
    with pytest.raises(ValueError, match="at least one full KV block"):
        llm.hold_prefix(prefix[:10])
    # 40 blocks; the longest request (511 tokens of KV) needs 32, so holds may pin 8.
    with pytest.raises(ValueError, match="at most 8 of the pool's 40 blocks"):
        llm.hold_prefix(prompts(1, seed=6, lo=9 * 16, hi=9 * 16)[0])
    with pytest.raises(ValueError, match="token ids"):
        llm.hold_prefix([-1] * 20)
    off = make_engine(enable_prefix_caching=False)
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        off.hold_prefix(prefix)
    assert llm.engine.scheduler.kv.all_blocks_free() and not llm.engine.has_unfinished()


def test_async_hold_survives_concurrent_pressure(make_engine):
    engine = make_engine(AsyncLLM, **SMALL_POOL)
    held = prompts(1, seed=8, lo=64, hi=64)[0]

    async def final(prompt):
        out = None
        async for out in engine.generate(prompt, GREEDY, output_kind="final"):
            pass
        return out

    async def main():
        async with await engine.hold_prefix(held) as handle:
            assert handle.num_tokens == 64
            await asyncio.gather(*(final(p) for p in pressure()))
            return (await final(held + [9])).num_cached_tokens

    assert asyncio.run(main()) == 64
    wait_kv_free(engine)


def test_background_hold(make_engine):
    engine = make_engine(BackgroundLLM, **SMALL_POOL)
    held = prompts(1, seed=9, lo=32, hi=32)[0]
    handle = engine.hold_prefix(held, timeout=60)
    assert handle.num_tokens == 32
    out = engine.result(engine.submit(held + [4], GREEDY), timeout=60)
    assert out.num_cached_tokens == 32
    handle.release()
    wait_kv_free(engine.async_llm)


def test_async_hold_after_shutdown_raises_and_release_is_quiet(make_engine):
    from plait.engine.async_llm import EngineDeadError

    engine = make_engine(AsyncLLM, **SMALL_POOL)
    prefix = prompts(1, seed=10, lo=32, hi=32)[0]

    async def main():
        handle = await engine.hold_prefix(prefix)
        engine.shutdown()
        handle.release()  # the engine is gone: nothing to return blocks to, and no error
        with pytest.raises(EngineDeadError):
            await engine.hold_prefix(prefix)

    asyncio.run(main())


def test_the_longest_request_still_runs_beside_full_holds(make_engine):
    """Holds leave room for the longest request the engine accepts, so it runs instead of waiting forever."""
    llm = make_engine(**SMALL_POOL)
    first, second = prompts(2, seed=12, lo=64, hi=64)
    handles = [llm.hold_prefix(first), llm.hold_prefix(second)]  # 8 blocks: the limit
    with pytest.raises(ValueError, match="would pin 9 KV blocks"):
        llm.hold_prefix(prompts(1, seed=13, lo=16, hi=16)[0])
    longest = prompts(1, seed=14, lo=400, hi=400)[0]
    out = llm.generate([longest], SamplingParams(max_tokens=112, temperature=0, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 112  # 511 tokens of KV: 32 blocks beside the 8 held
    assert cached_tokens(llm, first + [1]) == 64 and cached_tokens(llm, second + [1]) == 64
    for handle in handles:
        handle.release()
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_async_hold_past_the_bound_leaks_nothing(make_engine):
    engine = make_engine(AsyncLLM, **SMALL_POOL)
    first, second, third = prompts(3, seed=15, lo=64, hi=64)

    async def main():
        handles = [await engine.hold_prefix(first), await engine.hold_prefix(second)]
        with pytest.raises(ValueError, match="would pin"):
            await engine.hold_prefix(third)  # computed, then refused: its partial pin is released too
        for handle in handles:
            handle.release()

    asyncio.run(main())
    wait_kv_free(engine)
