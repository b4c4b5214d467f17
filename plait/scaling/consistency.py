"""Self-consistency: fixed-n majority vote (SC), Adaptive-Consistency (ASC) and Early-Stopping SC (ESC).

ASC (Aggarwal et al. 2023) samples until the leader is clear: it stops once P(p1 > p2) under
Beta(v1 + 1, v2 + 1) reaches `threshold` (0.95), or at `max_samples`. ESC (Li et al. 2024) samples windows and
stops on the first window whose answers are all the same. Both abort samples still running when they decide.
"""

from __future__ import annotations

import contextlib
import time

from plait.scaling.base import Strategy, check_float, check_int, finish
from plait.scaling.draws import Draws
from plait.scaling.result import ScalingResult
from plait.scaling.voting import Tally, leader_probability


class SelfConsistency(Strategy):
    """Draw n samples at once (one request, n children sharing the prompt) and take the most frequent answer."""

    name = "sc"

    def __init__(self, n: int = 16) -> None:
        self.n = self.budget = check_int("n", n, 1)

    async def run(self, draws: Draws) -> ScalingResult:
        started = time.perf_counter()
        samples, tally = [], Tally()
        async with contextlib.aclosing(draws.stream(self.n)) as stream:
            async for s in stream:
                samples.append(s)
                tally.add(s.answer)
        return finish(self.describe(), draws, samples, tally, started)

    def describe(self) -> str:
        return f"sc:n={self.n}"


class AdaptiveConsistency(Strategy):
    """ASC: sample `batch` at a time (concurrently), count them in index order, stop as soon as
    P(leader beats runner-up) >= threshold; never launch more than max_samples."""

    name = "asc"

    def __init__(self, max_samples: int = 40, threshold: float = 0.95, batch: int = 8, min_samples: int = 1) -> None:
        self.max_samples = self.budget = check_int("max_samples", max_samples, 1)
        self.threshold = check_float("threshold", threshold, 0.5, 1.0)
        self.batch = check_int("batch", batch, 1)
        self.min_samples = check_int("min_samples", min_samples, 1, max_samples)

    def should_stop(self, tally: Tally, counted: int) -> bool:
        if counted < self.min_samples:
            return False
        v1, v2 = tally.top_two()
        return v1 > 0 and leader_probability(int(v1), int(v2)) >= self.threshold

    async def run(self, draws: Draws) -> ScalingResult:
        started = time.perf_counter()
        samples, tally = [], Tally()
        cap = self.max_samples if draws.available is None else min(self.max_samples, draws.available)
        while draws.launched < cap:
            async with contextlib.aclosing(draws.stream(min(self.batch, cap - draws.launched))) as stream:
                async for s in stream:
                    samples.append(s)
                    tally.add(s.answer)
                    if self.should_stop(tally, len(samples)):
                        break  # leaving the block aborts the batch's other samples
            if self.should_stop(tally, len(samples)):
                return finish(self.describe(), draws, samples, tally, started, stopped_early=len(samples) < cap)
        return finish(self.describe(), draws, samples, tally, started)

    def describe(self) -> str:
        return f"asc:max={self.max_samples}"


class EarlyStoppingConsistency(Strategy):
    """ESC: windows of `window` samples (each window one concurrent request); stop after the first window whose
    answers are all equal (and not missing); the answer is the majority over every sample drawn."""

    name = "esc"

    def __init__(self, window: int = 5, max_samples: int = 40) -> None:
        self.window = check_int("window", window, 1)
        self.max_samples = self.budget = check_int("max_samples", max_samples, 1)

    async def run(self, draws: Draws) -> ScalingResult:
        started = time.perf_counter()
        samples, tally = [], Tally()
        cap = self.max_samples if draws.available is None else min(self.max_samples, draws.available)
        while draws.launched < cap:
            window = []
            async with contextlib.aclosing(draws.stream(min(self.window, cap - draws.launched))) as stream:
                async for s in stream:
                    window.append(s)
                    tally.add(s.answer)
            samples += window
            answers = {s.answer for s in window}
            if len(window) == self.window and len(answers) == 1 and None not in answers:
                return finish(self.describe(), draws, samples, tally, started, stopped_early=len(samples) < cap)
        return finish(self.describe(), draws, samples, tally, started)

    def describe(self) -> str:
        return f"esc:w={self.window},max={self.max_samples}"
