"""RPC (Zhou et al. 2025): Perplexity Consistency plus Reasoning Pruning.

Each sampled path gets a confidence p_i = exp(mean token logprob). Pruning: fit a two-component Weibull mixture
to the confidences and drop the paths that the low component more likely explains AND that lie below the mean
confidence. Then each answer scores the sum of p_i over its distinct completions (identical texts count once),
and the best score wins. With equal confidences (and distinct texts) this is the majority vote.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace

from plait.scaling.base import Strategy, check_int, finish
from plait.scaling.draws import Draws
from plait.scaling.result import Sample, ScalingResult
from plait.scaling.voting import Tally
from plait.scaling.weibull import low_component_probability


def prune(confidences: list[float]) -> list[bool]:
    """True for each path RPC keeps. Fewer than 4 paths, or (nearly) equal confidences: keep all."""
    n = len(confidences)
    if n < 4 or max(confidences) - min(confidences) < 1e-6:
        return [True] * n
    mean = sum(confidences) / n
    low = low_component_probability(confidences)
    return [not (p_low > 0.5 and c < mean) for p_low, c in zip(low, confidences)]


def rpc_tally(samples: list[Sample], pruning: bool = True) -> tuple[Tally, list[Sample]]:
    """Score answers -> (tally, copies of the samples whose `score` is their confidence, 0 when pruned)."""
    confidences = [math.exp(s.mean_logprob) if s.mean_logprob is not None else 1.0 for s in samples]
    keep = prune(confidences) if pruning else [True] * len(samples)
    tally, seen, scored = Tally(), set(), []
    for s, c, k in zip(samples, confidences, keep):
        scored.append(replace(s, score=c if k else 0.0))  # a copy: replayed samples are shared by strategies
        if not k or s.answer is None or (s.answer, s.text) in seen:
            continue
        seen.add((s.answer, s.text))
        tally.add(s.answer, c)
    return tally, scored


class RPC(Strategy):
    name = "rpc"

    def __init__(self, n: int = 16, pruning: bool = True) -> None:
        self.n = self.budget = check_int("n", n, 1)
        self.pruning = bool(pruning)

    async def run(self, draws: Draws) -> ScalingResult:
        started = time.perf_counter()
        async with contextlib.aclosing(draws.stream(self.n)) as stream:
            samples = [s async for s in stream]
        tally, scored = rpc_tally(samples, self.pruning)
        return finish(self.describe(), draws, scored, tally, started)

    def describe(self) -> str:
        return f"rpc:n={self.n}" + ("" if self.pruning else ",pruning=false")  # rows must not share a name
