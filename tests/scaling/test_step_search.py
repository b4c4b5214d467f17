"""Step search (A*-style) on a tiny random model through the public AsyncLLM: budgets hold, the KV pool is full
again after, a reward that favours one answer finds it, and a seed reproduces the search."""

import asyncio

import pytest

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM
from plait.outputs import CompletionOutput, RequestOutput
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
    assert r.text == r.samples[0].text  # the best complete solution is the answer, reported first
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


# A scripted engine and reward: which solution the search returns, and when it stops, independent of a model.
class ScriptedEngine:
    """Writes scripted steps, one token per character: `tree` maps a partial solution's text to the texts of its k
    next steps. A step ending in "|" (the delimiter) leaves the solution open; any other step ends it (as at EOS)."""

    def __init__(self, tree):
        self.tree = tree

    def encode(self, prompt):
        return prompt, [ord(c) for c in prompt]

    async def generate(self, ids, params, output_kind="final"):
        text = "".join(map(chr, ids))[len("Q:"):]
        steps = self.tree[text]
        assert len(steps) == params.n, (text, steps)
        outputs = []
        for i, step in enumerate(steps):
            step = step[:params.max_tokens]
            ended = step.endswith("|")
            reason = "stop" if ended or len(step) < params.max_tokens or step.endswith(".") else "length"
            outputs.append(CompletionOutput(i, step, [ord(c) for c in step], reason, "|" if ended else None,
                                            cumulative_logprob=-float(len(step))))
        yield RequestOutput("r", None, list(ids), outputs, finished=True)


def scripted(scores):
    async def reward(question, text):
        return scores.get(text, 0.0)
    return reward


def search_on(tree, scores, **kw):
    search = StepSearch(step_delimiter="|", reward=scripted(scores), **{"k": 2, "max_expansions": 10, **kw})
    r = asyncio.run(search.solve(ScriptedEngine(tree), "Q:", params=SamplingParams(max_tokens=60),
                                 extract=lambda text: text))
    return search, r


def test_a_complete_solution_that_ties_open_ones_does_not_end_the_search():
    # "a|x." is wrong (0) and as deep as the open "a|y|" (0): the search goes on and finds the right "a|y|r.".
    tree = {"": ["a|", "b|"], "a|": ["x.", "y|"], "a|y|": ["r.", "s|"]}
    search, r = search_on(tree, {"a|y|r.": 1.0})
    assert r.answer == "a|y|r." and r.samples[0].score == 1.0 and r.stopped_early
    assert search.expansions == 3
    # A tie above 0 does not end it either; equal complete solutions go to the first one generated.
    tree = {"": ["g.", "h|"], "h|": ["i.", "j."]}
    search, r = search_on(tree, {"g.": 1.0, "h|": 1.0, "h|i.": 1.0})
    assert r.answer == "g." and search.expansions == 2


def test_zero_reward_solutions_never_end_the_search_before_the_budget():
    tree = {"": ["w.", "a|"]}
    for depth in range(1, 8):
        tree["a|" * depth] = ["w.", "a|"]
    search, r = search_on(tree, {}, max_expansions=4)
    assert search.expansions == 4 and not r.stopped_early
    assert r.answer == "w." and all(s.finish_reason == "stop" for s in r.samples)  # complete, first generated
    # With a token budget it spends every token (7 expansions of 2 x 2 tokens, then 2 x 1) and no more.
    search, r = search_on(tree, {}, max_expansions=50, max_tokens_total=30, step_max_tokens=2)
    assert r.generated_tokens == 30 and search.expansions == 8 and not r.stopped_early and r.answer == "w."


def test_the_best_of_several_found_solutions_is_the_answer():
    # "c." (0.5) is found first, "p|d." (0.9) second: the answer is the better one, reported first.
    tree = {"": ["p|", "c."], "p|": ["d.", "e."]}
    search, r = search_on(tree, {"c.": 0.5, "p|": 0.4, "p|d.": 0.9, "p|e.": 0.1}, num_solutions=2)
    assert r.samples_used == 2 and r.stopped_early
    assert r.answer == "p|d." and r.text == r.samples[0].text
    assert [s.score for s in r.samples] == [0.9, 0.5, 0.1]


def test_a_wider_round_does_not_accept_a_solution_below_a_partial_it_expands():
    # width=2 pops "p|" (0.7); "c." (0.5) below it waits until "p|"'s children are scored.
    tree = {"": ["p|", "c.", "q|"], "p|": ["z.", "y.", "x."], "q|": ["u.", "v.", "t."]}
    search, r = search_on(tree, {"p|": 0.7, "c.": 0.5, "q|": 0.4, "p|z.": 0.9}, k=3, width=2)
    assert r.answer == "p|z." and search.expansions == 2
