"""n > 1 samples fork after the prompt (copy-on-write KV) on the tiny model: outputs equal n = 1 and fork-off
runs at every offset inside a block, the parent's KV is never written by its children, and forks mix with
prefix-cache hits, preemption and per-sample aborts without leaking a block."""

import pytest
import torch

from plait import SamplingParams
from tests.core.test_abort_sample import run as run_core
from tests.engine.test_llm import assert_no_leak, prompts

BLOCK = 16
SEEDED = SamplingParams(n=3, max_tokens=12, temperature=1.0, top_k=50, seed=7, ignore_eos=True, logprobs=1)


def samples(out) -> list[list[int]]:
    return [c.token_ids for c in out.outputs]


def logprobs(out) -> list[list[float]]:
    return [[entry[t].logprob for t, entry in zip(c.token_ids, c.logprobs)] for c in out.outputs]


def test_greedy_n4_equals_four_copies_of_n1_at_every_offset_in_a_block(make_engine):
    llm = make_engine(block_size=BLOCK)
    batch = [p[:length] for length, p in zip(range(BLOCK - 1, 2 * BLOCK + 2), prompts(19, seed=40, lo=40, hi=40))]
    greedy = dict(max_tokens=8, temperature=0, ignore_eos=True, logprobs=1)
    single = llm.generate(batch, SamplingParams(n=1, **greedy), use_tqdm=False)
    llm.reset_prefix_cache()  # the n = 4 prompts are computed, not served from the cache
    forked = llm.generate(batch, SamplingParams(n=4, **greedy), use_tqdm=False)
    assert llm.stats().forks == 3 * len(batch)
    for one, four in zip(single, forked):
        assert samples(four) == samples(one) * 4, len(one.prompt_token_ids)
        for row in logprobs(four):
            assert row == pytest.approx(logprobs(one)[0], abs=1e-5)
    assert_no_leak(llm)


@pytest.mark.parametrize("length", [15, 16, 17, 31, 32, 33])
def test_seeded_samples_identical_with_forks_on_and_off(make_engine, length):
    prompt = prompts(1, seed=41, lo=40, hi=40)[0][:length]
    results = {}
    for fork in (True, False):
        llm = make_engine(block_size=BLOCK, fork_samples=fork, batch_invariant=True)
        out = llm.generate([prompt], SEEDED, use_tqdm=False)[0]
        results[fork] = (samples(out), logprobs(out))
        assert llm.stats().forks == (2 if fork else 0)
        assert llm.stats().prompt_tokens == (length if fork else length + 2 * (length % BLOCK or BLOCK))
        assert_no_leak(llm)
    assert results[True] == results[False]
    assert len({tuple(s) for s in results[True][0]}) > 1  # the samples really differ


@pytest.mark.parametrize("extra", [
    dict(presence_penalty=0.8, frequency_penalty=0.5, repetition_penalty=1.3),  # per-sample penalty state
    dict(structured_outputs={"choice": ["alpha", "beta", "gamma delta"]}),  # each sample's own grammar state
    dict(min_tokens=3, stop_token_ids=[7, 8, 9], logit_bias={7: 5.0}),
])
def test_forks_keep_each_samples_own_sampling_state(make_engine, extra):
    prompt = prompts(1, seed=48, lo=37, hi=37)[0]
    params = SamplingParams(n=4, max_tokens=10, temperature=1.0, top_k=50, seed=13, logprobs=1, **extra)
    results = {}
    for fork in (True, False):
        llm = make_engine(block_size=BLOCK, fork_samples=fork, batch_invariant=True)
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        results[fork] = [(c.token_ids, c.finish_reason) for c in out.outputs], logprobs(out)
        assert llm.stats().forks == (3 if fork else 0)
        assert_no_leak(llm)
    assert results[True] == results[False]


def parent_kv(core, request_id: str, num_tokens: int) -> torch.Tensor:
    """The request's K and V at positions [0, num_tokens), every layer, read through its block table."""
    cache = core.runner.cache
    table = core.scheduler.kv.block_table(request_id)
    slots = [table[pos // cache.block_size] * cache.block_size + pos % cache.block_size for pos in range(num_tokens)]
    return cache.tensor[:, :, :, slots].clone()


@pytest.mark.parametrize("length", [37, 48])  # a partial last block (copied), and whole blocks only (shared)
def test_children_never_change_the_parent_kv(make_engine, length):
    llm = make_engine(block_size=BLOCK)
    core = llm.engine
    prompt = prompts(1, seed=42, lo=length, hi=length)[0]
    params = SamplingParams(n=4, max_tokens=10, temperature=1.0, seed=3, ignore_eos=True)
    core.add_request("r", prompt, params)
    core.step()  # the first sample's prompt; its siblings fork at the end of this step
    assert core.scheduler.num_forks == 3
    parent_table = list(core.scheduler.kv.block_table("r#0"))
    before = parent_kv(core, "r#0", length)
    tokens = {i: [] for i in range(4)}
    for _ in range(6):  # every sample decodes: the children write their own KV, not the parent's
        for out in core.step():
            for delta in out.samples:
                tokens[delta.index] += delta.token_ids
    assert len({tuple(t) for t in tokens.values()}) > 1  # the children diverged from the parent
    assert core.scheduler.kv.block_table("r#0")[:len(parent_table)] == parent_table
    assert torch.equal(parent_kv(core, "r#0", length), before)  # bitwise
    for child in ("r#1", "r#2", "r#3"):
        assert torch.equal(parent_kv(core, child, length), before)  # each child's prompt KV is the parent's
        if length % BLOCK:
            assert core.scheduler.kv.block_table(child)[length // BLOCK] != parent_table[length // BLOCK]
    core.abort("r")
    assert_no_leak(llm)


def test_forks_after_a_prefix_cache_hit(make_engine):
    llm = make_engine(block_size=BLOCK, batch_invariant=True)
    prompt = prompts(1, seed=43, lo=45, hi=45)[0]
    greedy = dict(max_tokens=8, temperature=0, ignore_eos=True)
    one = llm.generate([prompt], SamplingParams(**greedy), use_tqdm=False)[0]
    four = llm.generate([prompt], SamplingParams(n=4, **greedy), use_tqdm=False)[0]
    stats = llm.stats()
    assert stats.prefix_cache_hits == 32  # the parent's 2 full blocks came from the cache
    assert stats.prompt_tokens == 45 + 13 and stats.forks == 3  # the parent computed its last 13 tokens only
    assert samples(four) == samples(one) * 4
    assert_no_leak(llm)


def test_forks_need_no_prefix_cache(make_engine):
    """Without the prefix cache the siblings would each compute the whole prompt: forked, it is computed once."""
    prompt = prompts(1, seed=47, lo=45, hi=45)[0]
    greedy = SamplingParams(n=4, max_tokens=6, temperature=0, ignore_eos=True)
    results = {}
    for fork in (True, False):
        llm = make_engine(block_size=BLOCK, enable_prefix_caching=False, fork_samples=fork, batch_invariant=True)
        results[fork] = samples(llm.generate([prompt], greedy, use_tqdm=False)[0])
        assert (llm.stats().prompt_tokens, llm.stats().forks) == ((45, 3) if fork else (4 * 45, 0))
        assert_no_leak(llm)
    assert results[True] == results[False] and len(set(map(tuple, results[True]))) == 1


def test_forks_survive_preemption_of_parent_and_children(make_engine, tiny_model):
    """Seeded samples give the same tokens when hogs arriving later preempt them (recompute) as alone."""
    from plait.runner.attention import KVCache

    cfg, _ = tiny_model
    block = KVCache.bytes_per_block(cfg.num_layers, BLOCK, cfg.num_kv_heads, cfg.head_dim, torch.float32)
    prompt = prompts(1, seed=44, lo=40, hi=40)[0]
    params = SamplingParams(n=3, max_tokens=30, temperature=1.0, top_k=50, seed=5, ignore_eos=True, priority=1)
    alone = samples(make_engine(block_size=BLOCK, batch_invariant=True).generate([prompt], params,
                                                                                 use_tqdm=False)[0])
    tight = make_engine(block_size=BLOCK, batch_invariant=True, kv_cache_memory=10 * block,
                        max_num_batched_tokens=64)
    core = tight.engine
    core.add_request("r", prompt, params)
    sample_requests = [core.scheduler.requests[f"r#{i}"] for i in range(3)]
    tokens = [[] for _ in range(3)]
    hog = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, priority=-1)
    for step in range(200):
        if step == 3:  # the samples have forked and decode: hogs take their blocks
            for i, p in enumerate(prompts(2, seed=45, lo=60, hi=60)):
                core.add_request(f"hog{i}", p, hog)
        for out in core.step():
            if out.request_id == "r":
                for delta in out.samples:
                    tokens[delta.index] += delta.token_ids
        if not core.has_unfinished():
            break
    stats = tight.stats()
    assert stats.forks == 2
    assert all(r.num_preemptions > 0 for r in sample_requests)  # the parent and both children recomputed
    assert tokens == alone
    assert_no_leak(tight)


@pytest.mark.parametrize("abort_at", [0, 1, 3])  # before the prompt, right after the forks, while decoding
def test_aborting_the_parent_sample_leaves_its_children_unchanged(make_engine, abort_at):
    core = make_engine(block_size=BLOCK, batch_invariant=True).engine
    prompt = prompts(1, seed=46, lo=37, hi=37)[0]
    params = SamplingParams(n=4, max_tokens=12, temperature=1.0, top_k=50, seed=9, ignore_eos=True)
    full, _, _ = run_core(core, "full", prompt, params)
    cut, reasons, _ = run_core(core, "cut", prompt, params, abort_at=abort_at, sample_index=0)
    assert reasons == ["abort", "length", "length", "length"]
    assert cut[1:] == full[1:]
    assert cut[0] == full[0][:len(cut[0])]
    # aborted before its prompt ran, sample 0 never forked anyone: sample 1 became the parent
    assert core.scheduler.num_forks == 3 + 3 - (1 if abort_at == 0 else 0)
    assert core.scheduler.kv.all_blocks_free() and not core.has_unfinished()


def test_fork_samples_flag_reaches_the_scheduler():
    from plait.cli import build_parser
    from plait.config import EngineConfig
    from plait.engine.args import engine_kwargs

    args = build_parser().parse_args(["generate", "--no-fork-samples", "hi"])
    assert EngineConfig(**engine_kwargs(args)).fork_samples is False
    args = build_parser().parse_args(["generate", "hi"])
    assert EngineConfig(**engine_kwargs(args)).fork_samples is True
