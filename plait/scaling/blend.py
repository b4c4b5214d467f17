"""Blend-ASC: one global sample budget spread over many questions, round by round, to the least certain.

Every question starts with no samples (certainty 1/2). Each round computes each question's certainty, ASC's
P(p1 > p2) under Beta(v1 + 1, v2 + 1), and gives one more sample to each of the `round_size` least certain
questions (ties: fewer samples first, then question order), all drawn concurrently. It stops when the budget is
spent, or when every question is at its cap or (if `stop_threshold` is set) certain enough. Easy questions stop
early by themselves; the budget flows to the contested ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Sequence

from plait.params import SamplingParams
from plait.scaling.base import Strategy, check_float, check_int, finish
from plait.scaling.draws import Draws, LiveSampler
from plait.scaling.result import Sample, ScalingResult
from plait.scaling.voting import Tally, leader_probability


class BlendASC(Strategy):
    """`budget_per_question` is the average budget `solve_many` spends when no explicit budget is given;
    `max_per_question` caps any single question."""

    name = "blend"

    def __init__(self, budget_per_question: float = 8.0, max_per_question: int = 64, round_size: int = 16,
                 stop_threshold: float | None = None) -> None:
        self.budget_per_question = check_float("budget_per_question", budget_per_question, 0.0, 1e6, open_low=True)
        self.max_per_question = self.budget = check_int("max_per_question", max_per_question, 1)
        self.round_size = check_int("round_size", round_size, 1)
        self.stop_threshold = None if stop_threshold is None else check_float("stop_threshold", stop_threshold,
                                                                               0.5, 1.0)

    async def solve_many(self, engine: Any, prompts: Sequence[Any], budget: int | None = None, *,
                         params: SamplingParams | None = None, extract: Any = "last_number",
                         seed: int = 0) -> list[ScalingResult]:
        sampler = LiveSampler(engine, params, extract, seed)
        return await self.run_many([sampler.open(p) for p in prompts], budget)

    async def run(self, draws: Draws) -> ScalingResult:
        """One question alone: Blend-ASC degenerates to spending up to its budget on it."""
        return (await self.run_many([draws], None))[0]

    def certainty(self, tally: Tally) -> float:
        v1, v2 = tally.top_two()
        return leader_probability(int(v1), int(v2))

    async def run_many(self, draws: Sequence[Draws], budget: int | None) -> list[ScalingResult]:
        started = time.perf_counter()
        if budget is None:
            budget = int(round(self.budget_per_question * len(draws)))
        check_int("budget", budget, 0)
        tallies = [Tally() for _ in draws]
        samples: list[list[Sample]] = [[] for _ in draws]
        caps = [self.max_per_question if d.available is None else min(self.max_per_question, d.available)
                for d in draws]
        spent = 0
        while spent < budget:
            open_ = [i for i, d in enumerate(draws) if d.launched < caps[i] and not self._settled(tallies[i])]
            if not open_:
                break
            open_.sort(key=lambda i: (self.certainty(tallies[i]), draws[i].launched, i))
            chosen = open_[: min(self.round_size, budget - spent)]
            spent += len(chosen)
            drawn = await asyncio.gather(*(_one(draws[i]) for i in chosen))
            for i, got in zip(chosen, drawn):
                for s in got:
                    samples[i].append(s)
                    tallies[i].add(s.answer)
        share = (time.perf_counter() - started) / max(1, len(draws))  # wall time is shared: report each its share
        results = []
        for i, d in enumerate(draws):
            r = finish(self.describe(), d, samples[i], tallies[i], started, stopped_early=d.launched < caps[i])
            r.wall_s = share
            results.append(r)
        return results

    def _settled(self, tally: Tally) -> bool:
        return self.stop_threshold is not None and tally.weights != {} and \
            self.certainty(tally) >= self.stop_threshold

    def describe(self) -> str:
        return f"blend:avg={self.budget_per_question:g}"


async def _one(draws: Draws) -> list[Sample]:
    async with contextlib.aclosing(draws.stream(1)) as stream:
        return [s async for s in stream]
