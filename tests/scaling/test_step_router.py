"""Step routing between two tiny random models (different seeds, one tokenizer) through the public AsyncLLM:
never routing is the small model alone, always routing is the large model alone (greedy, token for token),
calibration sets the threshold to a quantile, TrimR stops when answers agree, and no KV block leaks."""

import asyncio
import math

import pytest

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM
from plait.scaling.spec import parse_strategy
from plait.scaling.step_router import StepRouter, quantile_of
from plait.scaling.steps import entropy
from tests.helpers import wait_kv_free

PROMPT = "Solve step by step: 2 + 3 ="
GREEDY = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
SAMPLED = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)


def alone(engine, params):
    async def run():
        final = None
        async for out in engine.generate(PROMPT, params, output_kind="final"):
            final = out
        return list(final.outputs[0].token_ids)
    return asyncio.run(run())


@pytest.mark.parametrize("rule", ["entropy", "perplexity"])
def test_never_routing_is_the_small_model_and_always_routing_the_large_one(engines, rule):
    small, large = engines
    never = StepRouter(small, rule=rule, threshold=math.inf, step_delimiter="e", step_max_tokens=8)
    r = asyncio.run(never.solve(large, PROMPT, params=GREEDY))
    assert r.details["token_ids"] == alone(small, GREEDY)
    assert r.details["steps"]["large"] == 0 and r.details["steps"]["small"] >= 3
    assert r.details["tokens"] == {"small": 30, "large": 0}
    # Perplexity: nothing discarded. Entropy: each step's one-token glimpse is (a step that the glimpse itself
    # ended keeps it).
    discarded = r.details["discarded_small_tokens"]
    assert discarded == 0 if rule == "perplexity" else 1 <= discarded <= r.details["steps"]["small"]
    assert r.generated_tokens == 30 + discarded
    if rule == "perplexity":
        assert r.details["scored_large_tokens"] == 30  # every step judged by the large model
    always = StepRouter(small, rule=rule, threshold=-math.inf, step_delimiter="e", step_max_tokens=8)
    r = asyncio.run(always.solve(large, PROMPT, params=GREEDY))
    assert r.details["token_ids"] == alone(large, GREEDY)
    assert r.details["steps"]["small"] == 0 and r.details["tokens"] == {"small": 0, "large": 30}
    assert r.generated_tokens == 30 + r.details["discarded_small_tokens"] > 30  # rejected small work still costs
    assert alone(small, GREEDY) != alone(large, GREEDY)  # the two models do differ
    wait_kv_free(small)
    wait_kv_free(large)


@pytest.mark.parametrize("rule", ["entropy", "perplexity"])
def test_calibrated_threshold_routes_the_steps_above_it(engines, rule):
    small, large = engines
    router = StepRouter(small, rule=rule, step_delimiter="e", step_max_tokens=8)
    with pytest.raises(ValueError, match="threshold is not set"):
        asyncio.run(router.solve(large, PROMPT, params=SAMPLED))
    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(4)]
    values = sorted(asyncio.run(router.statistics(large, prompts, SAMPLED, steps_per_prompt=3)))
    threshold = asyncio.run(router.calibrate(large, prompts, quantile=0.5, params=SAMPLED, steps_per_prompt=3))
    assert threshold == pytest.approx(quantile_of(values, 0.5))
    r = asyncio.run(router.solve(large, PROMPT, params=SAMPLED, seed=4))
    for step in r.details["trace"]:  # each step went where its statistic says
        assert (step["model"] == "large") == (step["stat"] > threshold)
    d = r.details
    assert d["tokens"]["small"] + d["tokens"]["large"] == len(d["token_ids"]) <= 30
    assert d["steps"]["small"] + d["steps"]["large"] == len(d["trace"])
    assert r.generated_tokens == d["tokens"]["small"] + d["tokens"]["large"] + d["discarded_small_tokens"]
    again = asyncio.run(router.solve(large, PROMPT, params=SAMPLED, seed=4))
    assert again.details["token_ids"] == d["token_ids"]  # seeded
    wait_kv_free(small)
    wait_kv_free(large)


def test_trimr_stops_when_consecutive_steps_agree(engines):
    small, large = engines
    router = StepRouter(small, rule="entropy", threshold=math.inf, step_delimiter="e", step_max_tokens=4, agree=3)
    r = asyncio.run(router.solve(large, PROMPT, params=GREEDY, extract=lambda text: "same"))
    assert r.stopped_early and r.details["trimmed"] and len(r.details["trace"]) == 3
    full = StepRouter(small, rule="entropy", threshold=math.inf, step_delimiter="e", step_max_tokens=4)
    assert len(asyncio.run(full.solve(large, PROMPT, params=GREEDY, extract=lambda t: "same")).details["trace"]) > 3
    wait_kv_free(small)


def test_parameters_entropy_and_spec(engines):
    small, large = engines
    assert entropy([math.log(0.5), math.log(0.5)]) == pytest.approx(math.log(2))
    assert entropy([0.0]) == 0.0
    assert quantile_of([1.0, 2.0, 3.0], 0.5) == 2.0 and quantile_of([1.0, 3.0], 0.25) == 1.5
    for bad in (dict(rule="vote"), dict(step_delimiter=""), dict(step_max_tokens=0), dict(agree=1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            StepRouter(small, **bad)
    with pytest.raises(ValueError, match="small engine"):
        asyncio.run(StepRouter(None, threshold=1.0).solve(large, PROMPT))
    s = parse_strategy("route:rule=perplexity,threshold=3.5,agree=2", two_engines=True)
    assert isinstance(s, StepRouter) and s.rule == "perplexity" and s.threshold == 3.5 and s.small is None
    with pytest.raises(ValueError, match="must be one of"):
        parse_strategy("route:rule=entropy")  # not a one-engine strategy (the server has one engine)
