"""Step search (A*-style) on a tiny random model through the public AsyncLLM: budgets hold, the KV pool is full
again after, a reward that favours one answer finds it, and a seed reproduces the search."""

import asyncio

import pytest

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM
from plait.scaling import StepSearch
from plait.scaling.spec import parse_strategy
from tests.helpers import wait_kv_free

PARAMS = SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True)
PROMPT = "Solve step by step: 2 + 3 ="
SHORT = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)


def has_k(text):
    return "k" if "k" in text else "none"


async def likes_k(question, text):
    return float("k" in text)


async def dislikes_k(question, text):
    return float("k" not in text)


def test_never_exceeds_its_token_or_expansion_budget(make_engine):
    engine = make_engine(AsyncLLM)
    for budget in (1, 7, 30, 61):
        search = StepSearch(k=3, step_delimiter="e", max_expansions=50, max_tokens_total=budget, step_max_tokens=8)
        r = asyncio.run(search.solve(engine, PROMPT, params=PARAMS, seed=3))
        assert 0 < r.generated_tokens <= budget
        assert r.samples_launched <= search.budget and search.expansions <= 50
    search = StepSearch(k=2, step_delimiter="e", max_expansions=3, step_max_tokens=6)
    r = asyncio.run(search.solve(engine, PROMPT, params=PARAMS, seed=3))
    assert search.expansions <= 3 and r.samples_launched <= 6 and r.generated_tokens <= 6 * 6
    assert r.details["expansions"] == search.expansions
    wait_kv_free(engine)


def test_complete_solutions_respect_the_solution_cap_and_are_counted(make_engine):
    engine = make_engine(AsyncLLM)
    search = StepSearch(k=2, step_delimiter="e", num_solutions=2, max_expansions=40, step_max_tokens=5)
    r = asyncio.run(search.solve(engine, PROMPT, params=SamplingParams(temperature=1.0, max_tokens=12,
                                                                       ignore_eos=True), seed=4))
    assert r.samples_used == 2 and r.stopped_early
    found = [s for s in r.samples if s.finish_reason != "partial"]
    assert all(s.num_tokens <= 12 for s in found)
    assert r.text == r.samples[0].text  # the first solution popped is the answer
    # A popped solution scored at least as high as every solution found later.
    assert r.samples[0].score >= r.samples[1].score
    wait_kv_free(engine)


def test_a_reward_that_favours_an_answer_finds_it(make_engine):
    engine = make_engine(AsyncLLM)
    for reward, answer in ((likes_k, "k"), (dislikes_k, "none")):
        for seed in range(3):
            search = StepSearch(k=4, step_delimiter="e", reward=reward, max_expansions=30, step_max_tokens=6)
            r = asyncio.run(search.solve(engine, PROMPT, params=SHORT, extract=has_k, seed=seed))
            assert r.answer == answer and r.samples[0].score == 1.0, (reward.__name__, seed, r.text)
    wait_kv_free(engine)


def test_same_seed_same_search_other_seed_other_search(make_engine):
    engine = make_engine(AsyncLLM)

    def run(seed):
        search = StepSearch(k=3, step_delimiter="e", max_expansions=6, step_max_tokens=6)
        r = asyncio.run(search.solve(engine, PROMPT, params=PARAMS, seed=seed))
        return [(s.text, s.score) for s in r.samples], r.generated_tokens

    assert run(7) == run(7)
    assert run(7) != run(8)
    wait_kv_free(engine)


def test_parameters_and_spec():
    s = parse_strategy("search:k=3,width=2,max_expansions=9,tokens=100,step_max_tokens=16")
    assert isinstance(s, StepSearch) and (s.k, s.width, s.max_expansions, s.max_tokens_total) == (3, 2, 9, 100)
    assert s.budget == 27
    for bad in (dict(k=0), dict(width=0), dict(max_expansions=0), dict(max_tokens_total=0), dict(step_delimiter="")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            StepSearch(**bad)
    with pytest.raises(ValueError, match="search takes the parameters"):
        parse_strategy("search:depth=3")


def test_resumed_partial_solutions_hit_the_prefix_cache(make_engine):
    engine = make_engine(AsyncLLM, block_size=4)
    before = engine.stats()
    search = StepSearch(k=2, step_delimiter="e", max_expansions=8, step_max_tokens=6)
    r = asyncio.run(search.solve(engine, PROMPT, params=PARAMS, seed=1))
    after = engine.stats()
    assert search.expansions >= 4
    # Of the prompt tokens sent (prompt + partial solution, once per expansion), those of every full block written
    # before come from the cache (each of the n=k children looks the prompt up, so hits may exceed what was sent).
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    sent = r.prompt_tokens
    assert hits >= sent - len(engine.encode(PROMPT)[1]) - 4 * search.expansions
    wait_kv_free(engine)
