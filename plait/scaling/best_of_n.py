"""Best-of-N: draw n samples concurrently, score each with a reward, return the best.

Without a reward, a sample's score is its own mean token log-probability, already recorded while sampling (no
extra call). The reward sees the question and the sample's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

from plait.scaling.base import Strategy, check_int, finish
from plait.scaling.draws import Draws
from plait.scaling.rewards import Reward
from plait.scaling.result import ScalingResult
from plait.scaling.voting import Tally


class BestOfN(Strategy):
    name = "bon"

    def __init__(self, n: int = 16, reward: Reward | None = None) -> None:
        self.n = self.budget = check_int("n", n, 1)
        self.reward = reward

    async def run(self, draws: Draws) -> ScalingResult:
        started = time.perf_counter()
        question = draws.prompt  # what the reward is asked about
        async with contextlib.aclosing(draws.stream(self.n)) as stream:
            samples = [s async for s in stream]
        if self.reward is None:
            scores = [s.mean_logprob if s.mean_logprob is not None else float("-inf") for s in samples]
        else:
            scores = list(await asyncio.gather(*(self.reward(question, s.text) for s in samples)))
        samples = [replace(s, score=float(sc)) for s, sc in zip(samples, scores)]
        best = max(samples, key=lambda s: (s.score, -s.index)) if samples else None
        tally = Tally()
        for s in samples:  # votes: the best score each answer reached
            if s.answer is not None and s.score > tally.weights.get(s.answer, float("-inf")):
                tally.weights[s.answer] = s.score
        return finish(self.describe(), draws, samples, tally, started, chosen=best)

    def describe(self) -> str:
        reward = getattr(self.reward, "__name__", "self_certainty") if self.reward else "logprob"
        return f"bon:n={self.n},reward={reward}"
