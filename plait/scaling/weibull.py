"""A two-component Weibull mixture fitted by EM, for RPC's reasoning pruning (pure Python; n is small).

Each M-step solves the weighted Weibull maximum-likelihood equation for the shape k,
  sum w x^k ln x / sum w x^k - 1/k - sum w ln x / sum w = 0   (increasing in k: bisection in log k),
then the scale in closed form, lambda = (sum w x^k / sum w)^(1/k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EPS = 1e-9


@dataclass
class Weibull:
    shape: float
    scale: float

    def log_pdf(self, x: float) -> float:
        k, lam = self.shape, self.scale
        log_z = math.log(x / lam)
        # z^k as exp(k ln z), capped: a point far above a sharp component's scale has density ~0 there, and
        # z ** k itself overflows (k up to 500, z up to 1e6 when confidences span several orders of magnitude)
        return math.log(k / lam) + (k - 1) * log_z - math.exp(min(k * log_z, 700.0))

    @property
    def mean(self) -> float:
        return self.scale * math.gamma(1 + 1 / self.shape)


def fit_weibull(xs: list[float], ws: list[float]) -> Weibull:
    total = sum(ws)
    mean_log = sum(w * math.log(x) for x, w in zip(xs, ws)) / total

    def g(log_k: float) -> float:
        k = math.exp(log_k)
        m = max(math.log(x) for x in xs)  # factor x^k as exp(k (ln x - m)) to avoid overflow
        powers = [w * math.exp(k * (math.log(x) - m)) for x, w in zip(xs, ws)]
        s = sum(powers)
        return sum(p * math.log(x) for p, x in zip(powers, xs)) / s - 1 / k - mean_log

    lo, hi = math.log(0.05), math.log(500.0)
    if g(hi) < 0:
        lo = hi  # (nearly) constant data: the sharpest shape allowed
    for _ in range(60):
        if lo >= hi:
            break
        mid = (lo + hi) / 2
        if g(mid) < 0:
            lo = mid
        else:
            hi = mid
    k = math.exp((lo + hi) / 2 if lo < hi else lo)
    scale = (sum(w * x ** k for x, w in zip(xs, ws)) / total) ** (1 / k)
    return Weibull(k, max(scale, _EPS))


def low_component_probability(values: list[float], iterations: int = 100) -> list[float]:
    """For each value in (0, 1], the posterior probability that it belongs to the mixture's low component
    (the one with the smaller mean). Starts from a split at the median."""
    xs = [min(max(v, 1e-6), 1.0) for v in values]
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    low = set(order[: len(xs) // 2])
    resp = [0.99 if i in low else 0.01 for i in range(len(xs))]
    for _ in range(iterations):
        pi = min(max(sum(resp) / len(xs), 1e-3), 1 - 1e-3)
        a = fit_weibull(xs, [r + _EPS for r in resp])
        b = fit_weibull(xs, [1 - r + _EPS for r in resp])
        new = []
        for x in xs:
            la, lb = math.log(pi) + a.log_pdf(x), math.log(1 - pi) + b.log_pdf(x)
            m = max(la, lb)
            new.append(math.exp(la - m) / (math.exp(la - m) + math.exp(lb - m)))
        converged = max(abs(p - q) for p, q in zip(new, resp)) < 1e-6
        resp = new
        if converged:
            break
    if a.mean > b.mean:
        resp = [1 - r for r in resp]
    return resp
