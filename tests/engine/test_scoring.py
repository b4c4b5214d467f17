"""Scoring a continuation (LLM.score / AsyncLLM.score) and prompt_logprobs with the prefix cache."""

import asyncio

import pytest
import torch

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM
from tests.engine.test_llm import assert_no_leak, prompts
from tests.helpers import plait_logits


def full_forward_logprobs(llm, ids: list[int], start: int) -> list[float]:
    """Logprobs of ids[start:] from one plain forward over the whole sequence (PyTorch path, no cache reuse)."""
    logits = plait_logits(llm.engine.runner.model, ids)
    lp = torch.log_softmax(logits.double(), dim=-1)
    return [lp[i - 1, ids[i]].item() for i in range(start, len(ids))]


@pytest.mark.parametrize("native", [True, False])
def test_score_matches_full_forward_with_and_without_cached_prefix(make_engine, native):
    llm = make_engine(block_size=16, native_kernels=native)
    prefix = prompts(1, seed=40, lo=70, hi=70)[0]
    continuations = prompts(4, seed=41, lo=3, hi=20)
    expected = [full_forward_logprobs(llm, prefix + c, len(prefix)) for c in continuations]

    cold = llm.score(prefix, continuations)
    for out, cont, want in zip(cold, continuations, expected):
        assert out.token_ids == cont and len(out.token_logprobs) == len(cont)
        assert out.token_logprobs == pytest.approx(want, abs=1e-4)
        assert out.logprob == pytest.approx(sum(want), abs=1e-3)
    assert_no_leak(llm)

    # Now the prefix is cached: only the continuation and the block holding the prompt's last token are computed.
    before = llm.stats().prompt_tokens
    warm = llm.score([prefix] * 4, continuations)
    computed = llm.stats().prompt_tokens - before
    cached_blocks = (len(prefix) - 1) // 16
    assert all(o.num_cached_tokens == cached_blocks * 16 for o in warm)
    assert computed == sum(len(prefix) + len(c) - cached_blocks * 16 for c in continuations)
    for out, want in zip(warm, expected):
        assert out.token_logprobs == pytest.approx(want, abs=1e-4)
    assert_no_leak(llm)


def test_prompt_logprobs_start_uses_cache_and_pads_with_none(make_engine):
    llm = make_engine(block_size=8)
    p = prompts(1, seed=42, lo=40, hi=40)[0]
    full = llm.generate([p], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2), use_tqdm=False)[0]
    assert full.num_cached_tokens == 0  # every position's logits wanted: nothing may come from the cache
    part = llm.generate([p], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2,
                                            prompt_logprobs_start=30), use_tqdm=False)[0]
    assert part.num_cached_tokens == 24  # the blocks wholly before position 29
    assert part.prompt_logprobs[:30] == [None] * 30 and len(part.prompt_logprobs) == 40
    for a, b in zip(part.prompt_logprobs[30:], full.prompt_logprobs[30:]):
        assert a.keys() == b.keys()
        assert all(a[t].logprob == pytest.approx(b[t].logprob, abs=1e-4) for t in a)
    assert_no_leak(llm)


def test_score_chunked_prefill_and_preemption_stay_exact(make_engine):
    """Long prompts split over steps and a pool small enough to preempt: the logprobs do not move."""
    ref = make_engine(block_size=4)
    batch = prompts(6, seed=43, lo=30, hi=50)
    pairs = [(p[:-8], p[-8:]) for p in batch]
    want = [o.token_logprobs for o in ref.score([a for a, _ in pairs], [b for _, b in pairs])]
    tight = make_engine(block_size=4, max_num_batched_tokens=16, kv_cache_memory=40 * 2 * 2 * 2 * 4 * 16 * 4)
    got = tight.score([a for a, _ in pairs], [b for _, b in pairs])
    for g, w in zip(got, want):
        assert g.token_logprobs == pytest.approx(w, abs=1e-4)
    assert_no_leak(tight)


def test_score_input_errors(make_engine):
    llm = make_engine()
    with pytest.raises(ValueError, match="continuation must not be empty"):
        llm.score("hello", "")
    with pytest.raises(ValueError, match="continuations has 1 entries for 2 prompts"):
        llm.score(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="continuations must be"):
        llm.score("a", 3.5)
    with pytest.raises(ValueError, match="prompt_logprobs_start"):
        SamplingParams(prompt_logprobs_start=3)
    with pytest.raises(ValueError, match="prompt_logprobs_start"):
        SamplingParams(prompt_logprobs=0, prompt_logprobs_start=0)
    with pytest.raises(ValueError, match="prompt_logprobs_start must be <"):
        llm.generate([[5, 6, 7]], SamplingParams(prompt_logprobs=0, prompt_logprobs_start=3), use_tqdm=False)
    text = llm.score("The capital of France is", " Paris")[0]
    assert text.token_ids == llm.tokenizer.encode(" Paris", add_special_tokens=False)


def test_async_score_matches_offline(make_engine):
    from plait.engine.llm import LLM

    offline = make_engine(LLM)
    prefix = prompts(1, seed=44, lo=50, hi=50)[0]
    conts = prompts(5, seed=45, lo=2, hi=12)
    want = offline.score(prefix, conts)
    engine = make_engine(AsyncLLM)

    async def main():
        return await asyncio.gather(*(engine.score(prefix, c) for c in conts))

    got = asyncio.run(main())
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert g.token_logprobs == pytest.approx(w.token_logprobs, abs=1e-4)
        assert g.logprob == pytest.approx(w.logprob, abs=1e-3)
