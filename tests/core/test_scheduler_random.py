"""Randomised scheduler + KV-cache trials (pure Python, no model): tiny pools, preemption, shared prefixes,
priorities, random aborts and prefix-cache resets. After every step the bookkeeping must be exact:

- reference counts equal the number of block tables holding each block; free blocks are exactly those at zero;
- every scheduled chunk attends only to KV that holds its own tokens (a shadow KV store records what each step
  wrote where, so a wrong prefix hit, a reused block or a stale table shows up as a wrong token);
- each request's output grows by exactly one token per sampled chunk, and after the workload every block is free.

With n > 1 groups, the samples of one prompt fork after its first sample's prompt: the shadow store applies each
step's `block_copies` before the step's writes, so a child that reads a wrong or missing copy shows up, and no
chunk may ever write into a block another table or a prefix hold also holds (copy-on-write). Per-sample aborts
(before a step, and while a step runs), prefix holds and preemption mix with the forks.

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
    for block, pins in kv.holds._pins.items():
        holders[block] += pins
    assert holders == kv.pool.ref_counts
    assert kv.pool.free_blocks() == {b for b, n in enumerate(holders) if n == 0}


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


def add_requests(rng: random.Random, s: Scheduler, prompt: list[int], max_tokens: int, rid: str,
                 arrival: float, n: int) -> list[Request]:
    """One prompt as the engine queues it: n > 1 becomes n sibling Requests of one group (EngineCore.add_request);
    a few ask for prompt logprobs, which only sample 0 computes (so it never forks from a sibling)."""
    params = SamplingParams(n=n, max_tokens=max_tokens, priority=rng.randint(-1, 1),
                            prompt_logprobs=0 if n > 1 and rng.random() < 0.2 else None)
    ids = [rid] if n == 1 else [f"{rid}#{i}" for i in range(n)]
    group = rid if n > 1 else None
    requests = [Request(ids[i], prompt, params, max_tokens, frozenset(), arrival=arrival, group_id=group,
                        sample_index=i) for i in range(n)]
    for request in requests:
        s.add(request)
    return requests


def copy_shadow_blocks(shadow: dict, copies: list[tuple[int, int]], block_size: int) -> None:
    """What the runner does with a step's block_copies, on the shadow store."""
    for src, dst in copies:
        for offset in range(block_size):
            if (src, offset) in shadow:
                shadow[(dst, offset)] = shadow[(src, offset)]
            else:
                shadow.pop((dst, offset), None)


def toggle_hold(rng: random.Random, kv: KVCacheManager, holds: list[int], prefixes: list[list[int]]) -> None:
    """Release a random hold or pin a random shared prefix (bounds refuse some: that is fine here)."""
    if holds and rng.random() < 0.5:
        kv.release_hold(holds.pop(rng.randrange(len(holds))))
        return
    if not prefixes:
        return
    try:
        holds.append(kv.hold_prefix(rng.choice(prefixes), keep_free=kv.num_blocks // 2).hold_id)
    except ValueError:
        pass


def run_trial(seed: int, speculate: bool = False, samples: bool = False, totals: dict | None = None) -> None:
    """samples: n > 1 groups (forks), per-sample aborts, aborts while a step runs and prefix holds."""
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 5])
    num_blocks = rng.randint(6, 24)
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=rng.random() < 0.8)
    s = Scheduler(SchedulerConfig(rng.randint(1, 6), rng.randint(1, 24)), kv, max_model_len=64)
    prefixes = [[rng.randrange(3, 60) for _ in range(rng.randint(0, 10))] for _ in range(3)]
    shadow: dict[tuple[int, int], tuple[int, int]] = {}  # (block, offset) -> (position, token) written there
    finished: list[Request] = []
    live: dict[str, Request] = {}
    holds: list[int] = []
    next_id = 0
    for _ in range(rng.randint(10, 40)):
        for _ in range(rng.choice([0, 0, 1, 2])):
            prompt = rng.choice(prefixes) + [rng.randrange(3, 60) for _ in range(rng.randint(1, 8))]
            max_tokens = rng.randint(1, 8)
            if kv.blocks_for(len(prompt) + max_tokens - 1) > num_blocks:
                continue
            rid = f"r{next_id}"
            next_id += 1
            n = rng.choice([1, 2, 3, 4]) if samples else 1
            for request in add_requests(rng, s, prompt, max_tokens, rid, float(next_id), n):
                live[request.request_id] = request
        if live and rng.random() < 0.1:
            s.abort(rng.choice(sorted(live)))  # with groups: one sample (EngineCore.abort with sample_index)
        if rng.random() < 0.03:
            kv.reset_prefix_cache()
            holds.clear()  # a reset drops every hold
        if samples and rng.random() < 0.15:
            toggle_hold(rng, kv, holds, [p for p in prefixes if len(p) >= block_size])
        if speculate:
            for request in s.running:
                if request.num_pending == 1:
                    request.spec_token_ids = random_drafts(rng, request.all_token_ids)
        out = s.schedule()
        copy_shadow_blocks(shadow, out.block_copies, block_size)
        if totals is not None:
            totals["copies"] += len(out.block_copies)
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
                assert kv.pool.ref_counts[block] == 1, (seed, chunk.request_id, pos)  # never a shared block
                shadow[(block, pos % block_size)] = (pos, token)
            if chunk.sample:
                drafts = chunk.token_ids[real:]
                sampled[chunk.request_id] = [SampledToken(t) for t in verify(tokens, drafts)]
            for child in chunk.fork_ids:  # forked siblings sample from the same logits: the same prompt
                assert s.requests[child].prompt_token_ids == tokens[:len(s.requests[child].prompt_token_ids)]
                sampled[child] = [SampledToken(next_token_of(s.requests[child].prompt_token_ids))]
        if samples and live and rng.random() < 0.05:
            s.abort(rng.choice(sorted(live)))  # while the step runs: update must skip it (and un-fork)
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
    if totals is not None:
        totals["forks"] += s.num_forks
    for hold_id in holds:
        kv.release_hold(hold_id)
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


@pytest.mark.parametrize("batch", range(4))
def test_random_workloads_with_forks_holds_and_sample_aborts_keep_kv_exact(batch):
    totals = {"forks": 0, "copies": 0}
    for seed in range(batch * 100, batch * 100 + 100):
        run_trial(seed, samples=True, totals=totals)
    # the workload really forks, and copies partial blocks (block sizes 2, 4 and 5 leave partial last blocks)
    assert totals["forks"] > 100 and totals["copies"] > 50, totals


@pytest.mark.parametrize("batch", range(2))
def test_random_workloads_with_forks_and_speculative_drafts(batch):
    totals = {"forks": 0, "copies": 0}
    for seed in range(batch * 100, batch * 100 + 100):
        run_trial(seed, speculate=True, samples=True, totals=totals)
    assert totals["forks"] > 100, totals
