"""Accuracy with a bootstrap 95% interval (seeded, so a report is reproducible)."""

from __future__ import annotations

import random


def bootstrap_interval(correct: list[bool], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean over questions: (low, high) of the central 95%."""
    n = len(correct)
    if n == 0:
        return 0.0, 0.0
    rng = random.Random(seed)
    values = [float(c) for c in correct]
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]
