"""The strategies on the real default model (slow): an easy few-shot sum, where sampling agrees quickly."""

import asyncio

import pytest

from plait import SamplingParams
from plait.scaling import AdaptiveConsistency, RPC, SelfConsistency
from tests.helpers import wait_kv_free

PROMPT = "Q: What is 1 + 1?\nA: 2\n\nQ: What is 3 + 4?\nA: 7\n\nQ: What is 2 + 5?\nA: 7\n\nQ: What is 2 + 2?\nA:"
PARAMS = SamplingParams(temperature=0.3, max_tokens=6, stop=["\n"])  # low: the 135M model is spread thin


@pytest.mark.slow
def test_strategies_on_the_default_model():
    from plait.engine.async_llm import AsyncLLM

    engine = AsyncLLM(num_threads=1)
    try:
        async def main():
            sc = await SelfConsistency(n=8).solve(engine, PROMPT, params=PARAMS, seed=0)
            asc = await AdaptiveConsistency(max_samples=16, batch=4).solve(engine, PROMPT, params=PARAMS, seed=0)
            rpc = await RPC(n=8).solve(engine, PROMPT, params=PARAMS, seed=0)
            return sc, asc, rpc
        sc, asc, rpc = asyncio.run(main())
    finally:
        engine.shutdown()
    assert sc.answer == "4" and asc.answer == "4"
    assert sc.votes["4"] == max(sc.votes.values()) and len(sc.samples) == 8
    assert asc.samples_launched <= 16 and asc.samples_used <= asc.samples_launched
    assert rpc.answer in rpc.votes
    assert all(s.mean_logprob is not None for s in rpc.samples)
    wait_kv_free(engine)
