"""Vote tallies and the stopping statistics of the adaptive strategies (pure Python, exact arithmetic)."""

from __future__ import annotations

from fractions import Fraction
from math import comb

from plait.scaling.result import Sample


class Tally:
    """Weighted votes per answer. Ties go to the answer that got its first vote earliest (deterministic)."""

    def __init__(self) -> None:
        self.weights: dict[str, float] = {}
        self._first: dict[str, int] = {}

    def add(self, answer: str | None, weight: float = 1.0) -> None:
        if answer is None:
            return  # a sample with no answer votes for nothing
        self._first.setdefault(answer, len(self._first))
        self.weights[answer] = self.weights.get(answer, 0.0) + weight

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.weights.items(), key=lambda kv: (-kv[1], self._first[kv[0]]))

    def leader(self) -> str | None:
        ranked = self.ranked()
        return ranked[0][0] if ranked else None

    def top_two(self) -> tuple[float, float]:
        ranked = self.ranked()
        first = ranked[0][1] if ranked else 0.0
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        return first, second


def leader_probability(v1: int, v2: int) -> float:
    """ASC's stopping statistic: P(p1 > p2) when p1 / (p1 + p2) ~ Beta(v1 + 1, v2 + 1), i.e. P(X > 1/2).

    For integer parameters the Beta CDF is a binomial tail: P(X <= x) = P(Bin(a + b - 1, x) >= a), so
    P(X > 1/2) = P(Bin(v1 + v2 + 1, 1/2) <= v1), exact. Example: 4 votes to 0 -> 31/32 = 0.969 (stops at 0.95);
    3 to 0 -> 15/16 = 0.9375 (does not).
    """
    n = v1 + v2 + 1
    return float(Fraction(sum(comb(n, k) for k in range(v1 + 1)), 2 ** n))


def majority(samples: list[Sample]) -> Tally:
    tally = Tally()
    for s in samples:
        tally.add(s.answer)
    return tally


def representative(samples: list[Sample], answer: str | None) -> Sample | None:
    """The first sample that gave `answer` (its text is what a caller sees), else the first sample."""
    for s in samples:
        if s.answer == answer:
            return s
    return samples[0] if samples else None
