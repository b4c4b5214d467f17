"""When does verifying drafts pay? A step's time is close to linear in its token count, t(T) = a + b T (a: reading
the weights and fixed overhead; b: the per-token arithmetic). Adding D draft tokens to a step of T tokens that
yields N decode tokens gains G expected tokens and costs b D; throughput rises iff G / D > b N / (a + b T).

So each drafted token is worth its cost when its chance of being accepted beats `token_share(N, T)`: at batch 1 on
a CPU (weight reads dominate) almost any draft pays; at 64 decodes the share is near 1 and speculation stops
itself. a and b are fitted online from the engine's own step times (exponentially forgetting least squares), so
the rule follows the machine it runs on; until the fit has seen steps of different sizes it uses a prior.
"""

from __future__ import annotations

# Prior: the fixed part of a step costs as much as this many tokens (a CPU decode step at small batch).
_PRIOR_FIXED_TOKENS = 16.0
_DECAY = 0.98
# Steps larger than this (long prefill chunks) say little about the cost of a few more decode rows.
_MAX_FIT_TOKENS = 512


class StepCostModel:
    def __init__(self) -> None:
        self._w = self._t = self._s = self._tt = self._ts = 0.0

    def observe(self, num_tokens: int, seconds: float) -> None:
        if num_tokens < 1 or num_tokens > _MAX_FIT_TOKENS or seconds <= 0:
            return
        d = _DECAY
        self._w = d * self._w + 1.0
        self._t = d * self._t + num_tokens
        self._s = d * self._s + seconds
        self._tt = d * self._tt + num_tokens * num_tokens
        self._ts = d * self._ts + num_tokens * seconds

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
        # Noise can push the fit out of the physical range: keep both terms non-negative and b small but > 0.
        b = max(b, 1e-9)
        return max(a, 0.0), b

    def token_share(self, num_decodes: int, num_tokens: int) -> float:
        """b N / (a + b T): the acceptance chance a drafted token needs to pay for itself in this step."""
        fitted = self.fit()
        if fitted is None:
            return num_decodes / (_PRIOR_FIXED_TOKENS + num_tokens)
        a, b = fitted
        return b * num_decodes / (a + b * num_tokens)
