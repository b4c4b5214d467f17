"""How long a step of T tokens takes, learnt from the engine's own steps, so drafting can be priced.

A step's time is not linear in its tokens on every machine: on a CPU whose matmuls stay memory-bound only up to a
few rows (plait's few-rows kernel covers up to 16, then MKL's GEMM takes over), the 17th row costs far more than
the 16th. So the model keeps the measured time of every step size it has seen (an exponential average per size)
and interpolates between them; outside what it has seen it extrapolates with a least-squares line t = a + b T over
all steps, and before any of that it knows nothing (None).
"""

from __future__ import annotations

import bisect

_DECAY = 0.98  # of the line fit's sums, per step
_TABLE_WEIGHT = 0.3  # of a new observation in its size's average
# Steps larger than this (long prefill chunks) say little about the cost of a few more decode rows.
_MAX_FIT_TOKENS = 512


class StepCostModel:
    def __init__(self) -> None:
        self._w = self._t = self._s = self._tt = self._ts = 0.0
        self._times: dict[int, float] = {}
        self._sizes: list[int] = []  # sorted keys of _times

    def observe(self, num_tokens: int, seconds: float, decode_only: bool = True) -> None:
        """One step's time. Only decode steps (one token per request, drafts included) enter the per-size table:
        a prompt chunk's rows attend to less context and run as one larger matmul, so a mixed step of the same
        size says little about a decode step's time; every step enters the line fit."""
        if num_tokens < 1 or num_tokens > _MAX_FIT_TOKENS or seconds <= 0:
            return
        d = _DECAY
        self._w = d * self._w + 1.0
        self._t = d * self._t + num_tokens
        self._s = d * self._s + seconds
        self._tt = d * self._tt + num_tokens * num_tokens
        self._ts = d * self._ts + num_tokens * seconds
        if not decode_only:
            return
        old = self._times.get(num_tokens)
        if old is None:
            bisect.insort(self._sizes, num_tokens)
            self._times[num_tokens] = seconds
        else:
            self._times[num_tokens] = (1 - _TABLE_WEIGHT) * old + _TABLE_WEIGHT * seconds

    def fit(self) -> tuple[float, float] | None:
        """(a, b) in seconds and seconds per token, or None while the observed step sizes barely vary."""
        if self._w < 3:
            return None
        mean_t, mean_s = self._t / self._w, self._s / self._w
        var_t = self._tt / self._w - mean_t * mean_t
        if var_t < 1.0:
            return None
        b = (self._ts / self._w - mean_t * mean_s) / var_t
        a = mean_s - b * mean_t
        return max(a, 0.0), max(b, 1e-9)  # noise can push the fit out of the physical range

    def step_time(self, num_tokens: int) -> float | None:
        """Expected seconds of a step of `num_tokens` tokens, or None when nothing is known yet."""
        times, sizes = self._times, self._sizes
        if num_tokens in times:
            return times[num_tokens]
        i = bisect.bisect_left(sizes, num_tokens)
        if 0 < i < len(sizes):  # between two measured sizes
            lo, hi = sizes[i - 1], sizes[i]
            return times[lo] + (times[hi] - times[lo]) * (num_tokens - lo) / (hi - lo)
        fitted = self.fit()
        if fitted is None:
            return None
        a, b = fitted
        estimate = a + b * num_tokens
        if i == len(sizes) and sizes:
            # Beyond the largest measured decode size: grow from it at least as fast as decode steps did between
            # it and a size half as large (the line is mostly prompt chunks, whose rows are cheaper).
            top = sizes[-1]
            half = [n for n in sizes if n <= top // 2]
            if half:
                b = max(b, (times[top] - times[half[-1]]) / (top - half[-1]))
            estimate = max(estimate, times[top] + b * (num_tokens - top))
        return estimate
