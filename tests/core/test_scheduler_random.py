"""Randomised scheduler + KV-cache trials (pure Python, no model): tiny pools, preemption, shared prefixes,
priorities, random aborts and prefix-cache resets. After every step the bookkeeping must be exact:

- reference counts equal the number of block tables holding each block; free blocks are exactly those at zero;
- every scheduled chunk attends only to KV that holds its own tokens (a shadow KV store records what each step
  wrote where, so a wrong prefix hit, a reused block or a stale table shows up as a wrong token);
- each request's output grows by exactly one token per sampled chunk, and after the workload every block is free.

With speculation, decoding requests get random drafts (some right, some wrong) verified by the same
deterministic "model": outputs must be exactly the one-token-at-a-time ones, and a rejected draft's KV must never
be read as context or served from the prefix cache (the shadow store would show its token).
"""

import random

import pytest

from plait.cache.kv_manager import KVCacheManager
from plait.config import SchedulerConfig
from plait.core.request import Request
from plait.core.sched_output import ModelOutput, SampledToken
from plait.core.scheduler import Scheduler
from plait.params import SamplingParams


def check_refcounts(s: Scheduler) -> None:
    kv = s.kv
    holders = [0] * kv.num_blocks
    for table in kv._tables.values():
        for block in table.blocks:
            holders[block] += 1
    assert holders == kv.pool.ref_counts
    assert set(kv.pool._free) == {b for b, n in enumerate(holders) if n == 0}


def verify(tokens: list[int], drafts: list[int]) -> list[int]:
    """The accepted drafts plus the token after them, as greedy verification yields them."""
    out: list[int] = []
    for draft in drafts:
        token = next_token_of(tokens + out)
        if draft != token:
            return out + [token]
        out.append(draft)
    return out + [next_token_of(tokens + out)]


def next_token_of(tokens: list[int]) -> int:
    """Deterministic in the request's own tokens, as a model's greedy choice is."""
    return 3 + (sum(tokens[-3:]) * 31 + len(tokens)) % 50


def random_drafts(rng: random.Random, tokens: list[int]) -> list[int]:
    drafts: list[int] = []
    for _ in range(rng.randint(0, 4)):
        right = next_token_of(tokens + drafts)
        drafts.append(right if rng.random() < 0.6 else rng.randrange(3, 60))
    return drafts


def run_trial(seed: int, speculate: bool = False) -> None:
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 5])
    num_blocks = rng.randint(6, 24)
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=rng.random() < 0.8)
    s = Scheduler(SchedulerConfig(rng.randint(1, 6), rng.randint(1, 24)), kv, max_model_len=64)
    prefixes = [[rng.randrange(3, 60) for _ in range(rng.randint(0, 10))] for _ in range(3)]
    shadow: dict[tuple[int, int], tuple[int, int]] = {}  # (block, offset) -> (position, token) written there
    finished: list[Request] = []
    live: dict[str, Request] = {}
    next_id = 0
    for _ in range(rng.randint(10, 40)):
        for _ in range(rng.choice([0, 0, 1, 2])):
            prompt = rng.choice(prefixes) + [rng.randrange(3, 60) for _ in range(rng.randint(1, 8))]
            max_tokens = rng.randint(1, 8)
            if kv.blocks_for(len(prompt) + max_tokens - 1) > num_blocks:
                continue
            rid = f"r{next_id}"
            next_id += 1
            request = Request(rid, prompt, SamplingParams(max_tokens=max_tokens, priority=rng.randint(-1, 1)),
                              max_tokens, frozenset(), arrival=float(next_id))
            s.add(request)
            live[rid] = request
        if live and rng.random() < 0.1:
            s.abort(rng.choice(sorted(live)))
        if rng.random() < 0.03:
            kv.reset_prefix_cache()
        if speculate:
            for request in s.running:
                if request.num_pending == 1:
                    request.spec_token_ids = random_drafts(rng, request.all_token_ids)
        out = s.schedule()
        sampled = {}
        for chunk in out.chunks:
            request = s.requests[chunk.request_id]
            tokens = request.all_token_ids
            # Everything before the chunk must already be in this request's blocks, holding its own tokens.
            for pos in range(chunk.start):
                block, offset = chunk.block_table[pos // block_size], pos % block_size
                assert shadow.get((block, offset)) == (pos, tokens[pos]), (seed, chunk.request_id, pos)
            real = len(chunk.token_ids) - chunk.num_draft
            assert chunk.token_ids[:real] == tokens[chunk.start: chunk.start + real]
            for i, token in enumerate(chunk.token_ids):
                pos = chunk.start + i
                block = chunk.block_table[pos // block_size]
                assert kv.pool.ref_counts[block] >= 1
                shadow[(block, pos % block_size)] = (pos, token)
            if chunk.sample:
                drafts = chunk.token_ids[real:]
                sampled[chunk.request_id] = [SampledToken(t) for t in verify(tokens, drafts)]
        s.update(out, ModelOutput(sampled))
        check_refcounts(s)
        for rid in [r for r, q in live.items() if q.finished]:
            finished.append(live.pop(rid))
    for request in finished:
        if request.finish_reason == "abort":
            continue
        chain = list(request.prompt_token_ids)
        for _ in request.output_token_ids:
            chain.append(next_token_of(chain))
        assert request.output_token_ids == chain[len(request.prompt_token_ids):], (seed, request.request_id)
        assert len(request.output_token_ids) == request.max_tokens
    for rid in list(live):
        s.abort(rid)
    s.schedule()
    check_refcounts(s)
    assert kv.all_blocks_free()
    assert not s.has_unfinished()


@pytest.mark.parametrize("batch", range(6))
def test_random_workloads_keep_kv_bookkeeping_exact(batch):
    for seed in range(batch * 100, batch * 100 + 100):
        run_trial(seed)


@pytest.mark.parametrize("batch", range(3))
def test_random_workloads_with_speculative_drafts_keep_outputs_and_kv_exact(batch):
    for seed in range(batch * 100, batch * 100 + 100):
        run_trial(seed, speculate=True)
