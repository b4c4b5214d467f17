"""Strategies on a live AsyncLLM over a tiny random model: concurrency, budgets, aborts, seeds, scoring."""

import asyncio

import pytest

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM
from plait.scaling import AdaptiveConsistency, BestOfN, BlendASC, EarlyStoppingConsistency, RPC, SelfConsistency
from plait.scaling.rewards import llm_judge, oracle, self_certainty
from plait.scaling.scoring import score_continuation
from tests.helpers import wait_kv_free

PARAMS = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
PROMPT = "Question: what is 2 + 3? Answer:"


def same(_text):
    return "A"  # every sample agrees: adaptive strategies stop as early as they can


def by_length(text):
    return str(len(text) % 3)


def idle(engine):
    async def wait():
        for _ in range(500):
            if engine.num_pending == 0 and not engine.engine.has_unfinished():
                return
            await asyncio.sleep(0.01)
    return wait()


def test_self_consistency_runs_its_samples_in_shared_steps(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        steps = engine.stats().steps
        r = await SelfConsistency(n=8).solve(engine, PROMPT, params=PARAMS, extract=by_length)
        return r, engine.stats().steps - steps
    r, steps = asyncio.run(main())
    assert r.samples_used == 8 and len(r.samples) == 8 and r.generated_tokens == 8 * 12
    assert steps <= 13  # 8 samples x 12 tokens in ~12 decode steps (+ prefill): concurrent, not one after another
    assert sum(r.votes.values()) == 8 and r.answer == max(r.votes, key=r.votes.get)
    wait_kv_free(engine)


def test_asc_stops_early_and_aborts_the_rest_without_leaking_kv(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        r = await AdaptiveConsistency(max_samples=40, batch=8).solve(
            engine, PROMPT, params=SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True, stop=["e"]),
            extract=same)
        await idle(engine)
        return r
    r = asyncio.run(main())
    assert r.samples_used == 4 and r.stopped_early and r.answer == "A"
    assert r.samples_launched == 8  # one batch launched, four of it aborted once ASC decided
    # The stop string gives the samples different lengths, so some of the batch were still running at the decision:
    # they were aborted, and their partial tokens are counted with the finished ones'.
    finished = sum(s.num_tokens for s in r.samples)
    assert finished < r.generated_tokens < finished + 4 * 40
    wait_kv_free(engine)


def test_adaptive_budgets_hold_when_answers_never_agree(make_engine):
    engine = make_engine(AsyncLLM)
    counter = iter(range(10**6))

    def distinct(_text):
        return str(next(counter))

    async def main():
        asc = await AdaptiveConsistency(max_samples=10, batch=4).solve(engine, PROMPT, params=PARAMS, extract=distinct)
        esc = await EarlyStoppingConsistency(window=3, max_samples=7).solve(engine, PROMPT, params=PARAMS,
                                                                              extract=distinct)
        return asc, esc
    asc, esc = asyncio.run(main())
    assert asc.samples_launched == asc.samples_used == 10 and not asc.stopped_early
    assert esc.samples_launched == esc.samples_used == 7


def test_esc_stops_after_one_unanimous_window(make_engine):
    engine = make_engine(AsyncLLM)
    r = asyncio.run(EarlyStoppingConsistency(window=5, max_samples=40).solve(engine, PROMPT, params=PARAMS,
                                                                             extract=same))
    assert r.samples_used == 5 and r.stopped_early


def test_a_seed_reproduces_the_samples(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        a = await SelfConsistency(n=4).solve(engine, PROMPT, params=PARAMS, seed=7)
        b = await SelfConsistency(n=4).solve(engine, PROMPT, params=PARAMS, seed=7)
        c = await SelfConsistency(n=4).solve(engine, PROMPT, params=PARAMS, seed=8)
        return a, b, c
    a, b, c = asyncio.run(main())
    assert [s.text for s in a.samples] == [s.text for s in b.samples]
    assert [s.text for s in a.samples] != [s.text for s in c.samples]


def test_blend_asc_spends_one_budget_over_many_prompts(make_engine):
    engine = make_engine(AsyncLLM)
    prompts = [f"Question {i}: add {i} and {i}." for i in range(5)]

    async def main():
        return await BlendASC(round_size=4).solve_many(engine, prompts, 13, params=PARAMS, extract=by_length)
    results = asyncio.run(main())
    assert sum(r.samples_used for r in results) == 13 and all(r.samples_used >= 1 for r in results)
    wait_kv_free(engine)


def test_rpc_and_best_of_n_use_the_recorded_logprobs(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        rpc = await RPC(n=6).solve(engine, PROMPT, params=PARAMS, extract=by_length)
        bon = await BestOfN(n=6).solve(engine, PROMPT, params=PARAMS, extract=by_length)
        return rpc, bon
    rpc, bon = asyncio.run(main())
    assert all(s.mean_logprob is not None and s.mean_logprob < 0 for s in rpc.samples)
    assert bon.text == max(bon.samples, key=lambda s: s.mean_logprob).text


def test_scoring_fallback_matches_the_logprobs_of_generation(make_engine):
    """The prompt_logprobs fallback must give the same numbers as the sampler's own logprobs (fp32)."""
    engine = make_engine(AsyncLLM)

    async def main():
        params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=0)
        final = None
        async for out in engine.generate(PROMPT, params, output_kind="final"):
            final = out
        c = final.outputs[0]
        scored = await score_continuation(engine, final.prompt_token_ids, c.token_ids)
        generated = [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]
        return scored, generated
    scored, generated = asyncio.run(main())
    assert scored.token_logprobs == pytest.approx(generated, abs=1e-4)


def test_scoring_prefers_the_engine_score_call():
    class Scored:
        token_ids, token_logprobs, logprob = [5, 6], [-0.5, -1.5], -2.0

    class Engine:
        async def score(self, prompt, continuation):
            return Scored()
    s = asyncio.run(score_continuation(Engine(), "q", "a"))
    assert s.token_logprobs == [-0.5, -1.5] and s.logprob == -2.0 and s.mean_logprob == -1.0


def test_rewards_on_a_live_engine(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        certainty = await self_certainty(engine)("Question:", " 5")
        judged = await llm_judge(engine)("What is 2 + 3?", "5")
        assert 0.0 < judged < 1.0
        good = await oracle("5")("Question:", "it is 5")
        bad = await oracle("5")("Question:", "it is 6")
        return certainty, good, bad
    certainty, good, bad = asyncio.run(main())
    assert certainty < 0 and good == 1.0 and bad == 0.0
