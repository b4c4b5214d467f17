"""The offline API end to end on a tiny random model: batching, caching, preemption, seeds, errors, leaks."""

import random

import pytest

from plait import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def prompts(count, seed=0, lo=3, hi=60):
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(rng.randint(lo, hi))] for _ in range(count)]


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def assert_no_leak(llm):
    assert llm.engine.scheduler.kv.all_blocks_free()
    assert not llm.engine.has_unfinished()


def test_outputs_in_input_order_and_lengths(make_engine):
    llm = make_engine()
    batch = prompts(5)
    outs = llm.generate(batch, GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == batch
    assert all(len(o.outputs[0].token_ids) == 12 and o.outputs[0].finish_reason == "length" for o in outs)
    assert_no_leak(llm)


def test_batch_invariance_with_staggered_arrivals(make_engine):
    """Each request's greedy output is the same alone and inside a batch of 32 joining at different steps."""
    llm = make_engine(max_num_batched_tokens=64, enable_prefix_caching=False)
    batch = prompts(32, seed=1)
    alone = [tokens(llm.generate([p], GREEDY, use_tqdm=False))[0] for p in batch]
    core = llm.engine
    results = {i: [] for i in range(32)}
    pending = list(enumerate(batch))
    while pending or core.has_unfinished():
        for _ in range(3):  # a few new arrivals every step
            if pending:
                i, p = pending.pop(0)
                core.add_request(f"s{i}", p, GREEDY)
        for out in core.step():  # the core hands out new tokens only
            results[int(out.request_id[1:])] += out.samples[0].token_ids
    assert [results[i] for i in range(32)] == alone
    assert_no_leak(llm)


def test_prefix_cache_same_outputs_and_hits(make_engine):
    system = prompts(1, seed=2, lo=64, hi=64)[0]
    batch = [system + q for q in prompts(6, seed=3, lo=5, hi=20)]
    plain = make_engine(enable_prefix_caching=False)
    expected = tokens(plain.generate(batch, GREEDY, use_tqdm=False))
    cached = make_engine(enable_prefix_caching=True, block_size=16)
    first = cached.generate(batch[:1], GREEDY, use_tqdm=False)
    rest = cached.generate(batch[1:], GREEDY, use_tqdm=False)
    assert tokens(first + rest) == expected
    assert [o.num_cached_tokens for o in rest] == [64] * 5  # the 4 full system-prompt blocks, each time
    stats = cached.stats()
    assert stats.prefix_cache_hits == 64 * 5
    assert_no_leak(cached)


def test_preemption_keeps_outputs(make_engine):
    batch = prompts(12, seed=4, lo=20, hi=40)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    roomy = make_engine()
    expected = tokens(roomy.generate(batch, params, use_tqdm=False))
    # 12 blocks x 16 tokens: holds ~3 requests at once, so the scheduler must preempt and recompute.
    tight = make_engine(kv_cache_memory=12 * 16 * 2 * 2 * 2 * 16 * 4, enable_prefix_caching=False)
    assert tight.engine.scheduler.kv.num_blocks == 12
    assert tokens(tight.generate(batch, params, use_tqdm=False)) == expected
    assert tight.stats().preemptions > 0
    assert_no_leak(tight)


def test_seeded_sampling_same_alone_and_in_batch(make_engine):
    llm = make_engine()
    # top_k keeps the distribution realistic: over the tiny random model's near-uniform 49k-token distribution,
    # ulp-level logit differences between batch shapes could move an inverse-CDF draw across a token boundary.
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=123)
    target = prompts(1, seed=5)[0]
    alone = tokens(llm.generate([target], params, use_tqdm=False))[0]
    others = [SamplingParams(max_tokens=16, temperature=1.0)] * 7
    mixed = llm.generate(prompts(7, seed=6) + [target], others + [params], use_tqdm=False)
    assert mixed[-1].outputs[0].token_ids == alone
    assert_no_leak(llm)


def test_n_samples_share_prompt_and_differ(make_engine):
    llm = make_engine(block_size=4)
    out = llm.generate(prompts(1, seed=7, lo=30, hi=30), SamplingParams(n=4, max_tokens=10, temperature=1.0,
                                                                         seed=1), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    # siblings 1..3 forked from sibling 0 after its prompt: 30 prompt tokens computed once, no cache lookups
    stats = llm.stats()
    assert (stats.forks, stats.prompt_tokens, stats.prefix_cache_hits) == (3, 30, 0)
    assert_no_leak(llm)


def test_stop_strings_and_stop_tokens(make_engine, tokenizer):
    llm = make_engine()
    p = prompts(1, seed=8)[0]
    free = llm.generate([p], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True), use_tqdm=False)[0]
    text = free.outputs[0].text
    assert len(text) > 6
    stop = text[3:6]
    cut = llm.generate([p], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[: text.index(stop)]
    tok = free.outputs[0].token_ids[4]
    by_id = llm.generate([p], SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[tok]),
                         use_tqdm=False)[0].outputs[0]
    assert by_id.token_ids == free.outputs[0].token_ids[: free.outputs[0].token_ids.index(tok) + 1]
    assert by_id.stop_reason == tok
    assert_no_leak(llm)


def test_logprobs_and_prompt_logprobs(make_engine):
    llm = make_engine()
    p = prompts(1, seed=9, lo=10, hi=10)[0]
    out = llm.generate([p], SamplingParams(max_tokens=5, temperature=0, logprobs=3, prompt_logprobs=2),
                       use_tqdm=False)[0]
    comp = out.outputs[0]
    assert len(comp.logprobs) == 5
    for tok, entry in zip(comp.token_ids, comp.logprobs):
        assert entry[tok].rank == 1 and len(entry) == 3  # greedy token is the top one, plus 2 more alternatives
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == 10
    assert all(p[i] in out.prompt_logprobs[i] for i in range(1, 10))
    assert comp.cumulative_logprob == pytest.approx(sum(e[t].logprob for t, e in zip(comp.token_ids, comp.logprobs)))


BAD = [
    (dict(max_tokens=-1), "max_tokens"), (dict(temperature=-0.5), "temperature"), (dict(top_p=0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=-2), "top_k"), (dict(n=0), "n"), (dict(logprobs=100), "logprobs"),
    (dict(min_p=2), "min_p"), (dict(presence_penalty=5), "presence_penalty"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(stop=5), "stop"), (dict(n=129), "n"),
    (dict(stop=[str(i) for i in range(65)]), "stop"), (dict(stop="x" * 1025), "stop"),
]


@pytest.mark.parametrize("kwargs,field", BAD)
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("prompt,match", [("", "empty"), ([], "prompt"), (b"bytes", "bytes"), (3.5, "prompt"),
                                          ("bad \udcff text", "UTF-8"), ([1, 2, 10**9], "token ids"),
                                          ([5] * 600, "context length")])
def test_bad_prompts_are_refused_and_engine_keeps_serving(make_engine, prompt, match):
    llm = make_engine()
    with pytest.raises(ValueError, match=match):
        llm.generate([prompts(1)[0], prompt], GREEDY, use_tqdm=False)
    assert_no_leak(llm)
    assert len(llm.generate(prompts(2), GREEDY, use_tqdm=False)) == 2


def test_abort_frees_kv(make_engine):
    llm = make_engine()
    core = llm.engine
    core.add_request("a", prompts(1)[0], SamplingParams(max_tokens=100, ignore_eos=True))
    core.add_request("b", prompts(1, seed=1)[0], SamplingParams(max_tokens=3))
    core.step()
    out = core.abort("a")
    assert out.finished and out.samples[0].finish_reason == "abort"
    while core.has_unfinished():
        core.step()
    assert_no_leak(llm)


def test_equal_length_prompts_share_one_attention_call_and_match_alone(make_engine):
    """Equal-length uncached chunks in a step run as one batched SDPA call; outputs equal those run alone."""
    llm = make_engine(max_num_batched_tokens=256, enable_prefix_caching=False)
    batch = prompts(8, seed=12, lo=40, hi=40) + prompts(3, seed=13, lo=17, hi=17)
    alone = [tokens(llm.generate([p], GREEDY, use_tqdm=False))[0] for p in batch]
    assert tokens(llm.generate(batch, GREEDY, use_tqdm=False)) == alone
    assert_no_leak(llm)


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_chunked_prefill_through_the_engine_matches_one_pass(make_engine, budget):
    """Token budgets 1/7/64 split the prompt into chunks; prompt logprobs and greedy tokens equal one pass."""
    p = prompts(1, seed=14, lo=90, hi=90)[0]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, prompt_logprobs=0, logprobs=0)
    whole = make_engine(max_num_batched_tokens=512).generate([p], params, use_tqdm=False)[0]
    chunked = make_engine(max_num_batched_tokens=budget).generate([p], params, use_tqdm=False)[0]
    assert chunked.outputs[0].token_ids == whole.outputs[0].token_ids
    for a, b in zip(chunked.prompt_logprobs[1:], whole.prompt_logprobs[1:]):
        (ta, la), (tb, lb) = next(iter(a.items())), next(iter(b.items()))
        assert ta == tb and la.logprob == pytest.approx(lb.logprob, abs=1e-4)


def test_prompt_logprobs_stay_aligned_after_preemption_mid_prefill(make_engine):
    """A request preempted while its prompt is half computed recomputes it; each position is recorded once."""
    params_plp = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, prompt_logprobs=0)
    long_prompt = prompts(1, seed=15, lo=120, hi=120)[0]
    hogs = prompts(3, seed=16, lo=30, hi=30)
    hog = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True, priority=-1)
    expected = make_engine().generate([long_prompt], params_plp, use_tqdm=False)[0].prompt_logprobs
    tight = make_engine(kv_cache_memory=14 * 16 * 2 * 2 * 2 * 16 * 4, max_num_batched_tokens=48,
                        enable_prefix_caching=False)
    outs = tight.generate(hogs + [long_prompt], [hog] * 3 + [params_plp], use_tqdm=False)
    got = outs[-1].prompt_logprobs
    assert tight.stats().preemptions > 0
    assert len(got) == len(long_prompt)
    for position, (a, b) in enumerate(zip(got[1:], expected[1:]), start=1):
        (ta, la), (tb, lb) = next(iter(a.items())), next(iter(b.items()))
        assert ta == tb == long_prompt[position] and la.logprob == pytest.approx(lb.logprob, abs=1e-4)
    assert_no_leak(tight)


def test_stop_string_on_the_last_token_reports_stop_and_respects_min_tokens(make_engine):
    llm = make_engine()
    # A prompt whose 6th output token's text ends a string seen nowhere earlier (searched, never skipped).
    for seed in range(8, 60):
        p = prompts(1, seed=seed)[0]
        free = llm.generate([p], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True), use_tqdm=False)[0]
        ids = free.outputs[0].token_ids
        prefix6 = llm.tokenizer.decode(ids[:6])
        stop = prefix6[-2:]
        if len(stop) == 2 and stop.strip() and stop not in prefix6[:-1] and prefix6 != llm.tokenizer.decode(ids[:5]):
            break
    else:
        pytest.fail("no prompt gives a usable stop string")
    # The stop string ends exactly with the 6th token's text: max_tokens=6 must still report "stop".
    last = llm.generate([p], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, stop=[stop]),
                        use_tqdm=False)[0].outputs[0]
    assert last.finish_reason == "stop" and last.stop_reason == stop and len(last.token_ids) == 6
    held = llm.generate([p], SamplingParams(max_tokens=20, min_tokens=10, temperature=0, ignore_eos=True,
                                            stop=[stop]), use_tqdm=False)[0].outputs[0]
    # The stop string inside the first min_tokens tokens does not end it; only a later one may.
    assert len(held.token_ids) > 10 and held.token_ids == ids[: len(held.token_ids)]
    assert_no_leak(llm)


def test_interrupted_generate_leaves_nothing_behind(make_engine):
    """KeyboardInterrupt (or any exception) inside generate aborts its requests: no KV held, no compute later."""
    llm = make_engine()
    real_step, calls = llm.engine.step, []

    def step():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step()

    llm.engine.step = step
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompts(4), GREEDY, use_tqdm=False)
    llm.engine.step = real_step
    assert_no_leak(llm)
    assert len(llm.generate(prompts(2), GREEDY, use_tqdm=False)) == 2


def test_reset_prefix_cache_forgets_blocks_in_use_too(make_engine):
    """Blocks a running request holds at the reset must not come back into the cache when it ends."""
    llm = make_engine(block_size=16)
    core = llm.engine
    p = prompts(1, seed=30, lo=64, hi=64)[0]
    core.add_request("a", p, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    core.step()
    core.step()  # prompt computed, its 4 full blocks registered, the request still running
    llm.reset_prefix_cache()
    while core.has_unfinished():
        core.step()
    before = llm.stats().prefix_cache_hits
    llm.generate([p], GREEDY, use_tqdm=False)
    assert llm.stats().prefix_cache_hits == before
    llm.generate([p], GREEDY, use_tqdm=False)  # computed after the reset: cached again
    assert llm.stats().prefix_cache_hits == before + 48
    assert_no_leak(llm)


def test_child_seeds_never_coincide_with_other_seeds(make_engine):
    """Sample i of seed s is not sample 0 of seed s + i (child seeds are hashed, not added)."""
    llm = make_engine()
    p = prompts(1, seed=31)[0]
    sampled = dict(max_tokens=12, temperature=1.0, ignore_eos=True)
    pair = llm.generate([p], SamplingParams(n=2, seed=5, **sampled), use_tqdm=False)[0]
    next_seed = llm.generate([p], SamplingParams(seed=6, **sampled), use_tqdm=False)[0]
    alone = llm.generate([p], SamplingParams(seed=5, **sampled), use_tqdm=False)[0]
    assert pair.outputs[1].token_ids != next_seed.outputs[0].token_ids
    assert pair.outputs[0].token_ids == alone.outputs[0].token_ids  # sample 0 keeps the request's own seed
    assert_no_leak(llm)


def test_seeded_output_survives_preemption(make_engine):
    """A seeded sampled request gives the same tokens when preempted and recomputed as when it runs alone."""
    params = SamplingParams(max_tokens=40, temperature=1.0, ignore_eos=True, seed=7)
    p = prompts(1, seed=32, lo=30, hi=30)[0]
    alone = make_engine().generate([p], params, use_tqdm=False)[0].outputs[0].token_ids
    tight = make_engine(kv_cache_memory=12 * 16 * 2 * 2 * 2 * 16 * 4, max_num_batched_tokens=48,
                        enable_prefix_caching=False)
    hog = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True, priority=-1)
    outs = tight.generate(prompts(3, seed=33, lo=30, hi=30) + [p], [hog] * 3 + [params], use_tqdm=False)
    assert tight.stats().preemptions > 0
    assert outs[-1].outputs[0].token_ids == alone
    assert_no_leak(tight)


def test_n_with_prompt_logprobs_computes_the_prompt_once(make_engine):
    llm = make_engine(block_size=16)
    p = prompts(1, seed=34, lo=40, hi=40)[0]
    params = SamplingParams(n=4, max_tokens=4, temperature=1.0, seed=1, prompt_logprobs=1, ignore_eos=True)
    out = llm.generate([p], params, use_tqdm=False)[0]
    # Sample 0 computes all 40 prompt tokens with their logprobs; the others fork from it after its prompt.
    assert (llm.stats().prompt_tokens, llm.stats().forks) == (40, 3)
    one = llm.generate([p], SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)[0]
    assert len(out.prompt_logprobs) == 40
    for a, b in zip(out.prompt_logprobs[1:], one.prompt_logprobs[1:]):
        assert {t: lp.logprob for t, lp in a.items()} == pytest.approx({t: lp.logprob for t, lp in b.items()})
    assert_no_leak(llm)


def test_batch_sharing_a_prefix_computes_it_once(make_engine):
    """Prompts sharing a system prompt, submitted together: the prefix is computed once (later ones wait a step
    for its blocks instead of recomputing them), outputs equal those without the prefix cache."""
    system = prompts(1, seed=17, lo=64, hi=64)[0]  # 4 full blocks of 16
    questions = prompts(6, seed=18, lo=8, hi=20)
    batch = [system + q for q in questions]
    plain = make_engine(enable_prefix_caching=False, max_num_batched_tokens=2048)
    expected = tokens(plain.generate(batch, GREEDY, use_tqdm=False))
    shared = make_engine(enable_prefix_caching=True, max_num_batched_tokens=2048)
    assert tokens(shared.generate(batch, GREEDY, use_tqdm=False)) == expected
    stats = shared.stats()
    assert stats.prompt_tokens == 64 + sum(len(q) for q in questions)
    assert stats.prefix_cache_hits == 64 * 5
    assert_no_leak(shared)


def test_long_prompt_logprobs_in_slices_equal_small_chunks(make_engine):
    """A 400-token prompt in one chunk (its logits computed 256 rows at a time) gives the prompt logprobs of
    64-token chunks."""
    p = prompts(1, seed=50, lo=400, hi=400)[0]
    params = SamplingParams(max_tokens=1, prompt_logprobs=1)
    whole = make_engine(max_num_batched_tokens=2048).generate([p], params, use_tqdm=False)[0].prompt_logprobs
    chunked = make_engine(max_num_batched_tokens=64).generate([p], params, use_tqdm=False)[0].prompt_logprobs
    assert len(whole) == len(chunked) == 400 and whole[0] is None
    for a, b in zip(whole[1:], chunked[1:]):
        assert {t: lp.logprob for t, lp in a.items()} == pytest.approx({t: lp.logprob for t, lp in b.items()},
                                                                       abs=1e-4)
