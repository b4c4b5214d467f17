"""The strategy protocol: built from its parameters, `await strategy.solve(engine, prompt) -> ScalingResult`.

`solve` opens live draws on the engine and calls `run(draws)`, the strategy itself, which only asks the draws for
samples. The same `run` replays stored samples (`plait eval --replay`), so live and replayed results agree.
"""

from __future__ import annotations

import time
from typing import Any

from plait.params import SamplingParams
from plait.scaling.draws import Draws, LiveSampler
from plait.scaling.result import Sample, ScalingResult
from plait.scaling.voting import Tally, representative


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_float(name: str, value: object, low: float, high: float, open_low: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value > high \
            or value < low or (open_low and value == low):
        raise ValueError(f"{name} must be a number in {'(' if open_low else '['}{low}, {high}], got {value!r}")
    return float(value)


class Strategy:
    """Subclasses set `name`, implement `async run(draws) -> ScalingResult` and `budget` (max samples)."""

    name = "strategy"
    budget: int

    async def solve(self, engine: Any, prompt: Any, *, params: SamplingParams | None = None,
                    extract: Any = "last_number", seed: int = 0) -> ScalingResult:
        """Answer one prompt (text or token ids) on `engine` (an AsyncLLM). `params` sets temperature, max_tokens,
        stop strings (its n must be 1); `extract` is 'last_number', 'boxed' or a function text -> answer."""
        return await self.run(LiveSampler(engine, params, extract, seed).open(prompt))

    async def run(self, draws: Draws) -> ScalingResult:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


async def solve_live(strategy: Strategy, draws: Draws) -> ScalingResult:
    """`run` for strategies that write step by step: on live draws they solve on the draws' engine with its
    settings (so `plait eval` runs them like any other); stored whole samples cannot be replayed step-wise."""
    from plait.scaling.draws import LiveDraws

    if not isinstance(draws, LiveDraws):
        raise ValueError(f"{strategy.name} samples step by step on a live engine; it cannot replay whole samples")
    return await strategy.solve(draws.engine, draws.prompt, params=draws.params, extract=draws.extract,
                                seed=draws.seed)


def finish(strategy: str, draws: Draws, samples: list[Sample], tally: Tally, started: float,
           stopped_early: bool = False, answer: str | None = None, chosen: Sample | None = None) -> ScalingResult:
    """Package a decision: the answer (default: the tally's leader) and the text of a sample that gave it."""
    answer = tally.leader() if answer is None and chosen is None else answer
    if chosen is None:
        chosen = representative(samples, answer)
    elif answer is None:
        answer = chosen.answer
    return ScalingResult(strategy=strategy, answer=answer, text=chosen.text if chosen else "", samples=samples,
                         samples_used=len(samples), samples_launched=draws.launched,
                         prompt_tokens=draws.prompt_tokens, generated_tokens=draws.generated_tokens,
                         wall_s=time.perf_counter() - started, votes=dict(tally.weights),
                         stopped_early=stopped_early)
