"""Test-time scaling on plait: spend more samples on a question, and spend them well.

Every strategy is built from its parameters and answers with `await strategy.solve(engine, prompt)`, where the
engine is an `AsyncLLM`; its samples run concurrently and share the prompt's KV. The same strategy replays samples
stored earlier (`run(draws)`), which is how `plait eval --replay` compares strategies on identical draws.

    from plait import AsyncLLM, SamplingParams
    from plait.scaling import AdaptiveConsistency
    result = await AdaptiveConsistency(max_samples=40).solve(engine, prompt,
                                                             params=SamplingParams(temperature=0.8, max_tokens=128))
    result.answer, result.samples_used, result.generated_tokens
"""

from plait.scaling.answers import answers_match, boxed, canonical, last_number
from plait.scaling.best_of_n import BestOfN
from plait.scaling.blend import BlendASC
from plait.scaling.consistency import AdaptiveConsistency, EarlyStoppingConsistency, SelfConsistency
from plait.scaling.draws import LiveSampler, ReplaySampler
from plait.scaling.particle_filter import ParticleFilter
from plait.scaling.result import Sample, ScalingResult
from plait.scaling.rpc import RPC
from plait.scaling.spec import build_strategy, parse_strategy
from plait.scaling.step_router import StepRouter
from plait.scaling.step_search import StepSearch

__all__ = ["AdaptiveConsistency", "BestOfN", "BlendASC", "EarlyStoppingConsistency", "ParticleFilter", "RPC",
           "SelfConsistency", "StepRouter", "StepSearch",
           "LiveSampler", "ReplaySampler", "Sample", "ScalingResult", "answers_match", "boxed", "canonical",
           "last_number", "build_strategy", "parse_strategy"]
