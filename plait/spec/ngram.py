"""Prompt lookup (n-gram) drafting: find the request's last n tokens earlier in its own prompt + output and
propose what followed them there.

The index is incremental: each new token adds one entry per n-gram length, so proposing costs O(n range) per step
whatever the length of the context (no rescans of a long prompt). The latest earlier occurrence wins (in editing
and extraction the nearest repetition is the likeliest to continue the same way) unless it is too close to the
end to give k tokens; then the one before it does, or the first (a loop repeating one phrase).
"""

from __future__ import annotations

from plait.spec.tokens import TokenView


class NgramIndex:
    """N-grams of lengths [min_n, max_n] of one token sequence, each mapped to where it last ended."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self._last_end: dict[tuple[int, ...], int] = {}
        self._previous_end: dict[tuple[int, ...], int] = {}
        self._first_end: dict[tuple[int, ...], int] = {}
        self._indexed = 1  # n-grams ending before this position are in the index

    def propose(self, tokens: TokenView, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching tail."""
        length = len(tokens)
        # Index every n-gram that ends before the last position: the tail itself must not match itself.
        for end in range(self._indexed, length):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                gram = tuple(tokens.slice(end - n, end))
                previous = self._last_end.get(gram)
                if previous is not None:
                    self._previous_end[gram] = previous
                else:
                    self._first_end[gram] = end
                self._last_end[gram] = end
        self._indexed = max(self._indexed, length)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            gram = tuple(tokens.slice(length - n, length))
            end = self._last_end.get(gram)
            if end is not None:
                for earlier in (self._previous_end.get(gram), self._first_end[gram]):
                    if end + k <= length:
                        break
                    if earlier is not None:
                        end = earlier
                return tokens.slice(end, min(end + k, length))
        return []
