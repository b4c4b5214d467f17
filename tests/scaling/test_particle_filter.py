"""Particle filtering on a tiny random model: constant reward = independent sampling, a sharp reward converges,
caps hold, and no KV block leaks (duplicated particles continue from shared prefixes)."""

import asyncio
import random

import pytest

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM
from plait.scaling.particle_filter import ParticleFilter, _Particle, softmax
from tests.helpers import wait_kv_free

PARAMS = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
PROMPT = "Solve step by step: 2 + 3 ="


async def constant(question, text):
    return 1.0


def test_constant_reward_never_resamples(make_engine):
    engine = make_engine(AsyncLLM)
    pf = ParticleFilter(n=4, step_delimiter="e", reward=constant, max_steps=6, step_max_tokens=6)
    r = asyncio.run(pf.solve(engine, PROMPT, params=PARAMS, seed=1))
    assert pf.resamples == 0 and r.details["resamples"] == 0 and r.details["steps"] >= 1
    assert len(r.samples) == 4 and len({s.text for s in r.samples}) == 4  # four independent streams
    assert all(s.num_tokens <= 24 for s in r.samples)
    assert r.generated_tokens == sum(s.num_tokens for s in r.samples)  # nothing discarded
    wait_kv_free(engine)


def test_a_sharp_reward_converges_to_the_favoured_particle(make_engine):
    engine = make_engine(AsyncLLM)

    async def longest(question, text):
        return float(len(text))  # with temperature 0.01 the softmax is all on the longest partial text

    pf = ParticleFilter(n=4, step_delimiter="e", reward=longest, temperature=0.01, max_steps=3, step_max_tokens=6)
    r = asyncio.run(pf.solve(engine, PROMPT, params=PARAMS, seed=2))
    assert pf.resamples >= 1 and r.details["resamples"] == pf.resamples
    # After the first resampling every particle descends from one ancestor: they share its first step.
    first_steps = {s.text.split("e")[0] for s in r.samples}
    assert len(first_steps) == 1
    assert r.text == max(r.samples, key=lambda s: s.score).text
    assert r.generated_tokens >= sum(s.num_tokens for s in r.samples) - 4 * 6  # discarded particles still cost
    asyncio.run(asyncio.sleep(0))
    wait_kv_free(engine)


def test_oracle_rewards_in_0_1_never_resample_at_temperature_1():
    # Why plait eval's oracle runs also use temperature=0.1: with rewards in [0, 1] and 8 particles, softmax(w / 1)
    # weights differ at most e-fold, and the effective sample size never drops below half (the resampling test).
    pf = ParticleFilter(n=8, temperature=1.0)
    for good in range(9):
        particles = [_Particle(reward=1.0 if i < good else 0.0) for i in range(8)]
        assert pf._resample(particles, random.Random(0)) is particles
    sharp = ParticleFilter(n=8, temperature=0.1)
    particles = [_Particle(reward=1.0 if i < 2 else 0.0) for i in range(8)]
    assert sharp._resample(particles, random.Random(0)) is not particles and sharp.resamples == 1


def test_parameters_and_softmax():
    assert softmax([0.0, 0.0]) == [0.5, 0.5]
    assert softmax([1000.0, 0.0])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step_delimiter"):
        ParticleFilter(step_delimiter="")
    with pytest.raises(ValueError, match="temperature"):
        ParticleFilter(temperature=0)
