"""Global prefix grouping for offline batches (BatchLLM): queue a batch so that prompts sharing a prefix run
together.

Sorting the prompts' token lists lexicographically is a depth-first walk of the prefix tree over all of them: every
set of prompts sharing a prefix becomes one contiguous run. The scheduler admits in arrival order, so each group's
prefix is computed once (later members wait a step for its blocks, then share them) and is freed when the group
ends, even when the KV pool is too small to keep every prefix cached and the caller's list is shuffled; plain LRU
would evict a prefix between its far-apart users and compute it again.
"""

from __future__ import annotations

from typing import Sequence


def prefix_grouped_order(token_lists: Sequence[Sequence[int]]) -> list[int]:
    """Indices of `token_lists` in the order to queue them (a stable lexicographic sort)."""
    return sorted(range(len(token_lists)), key=lambda i: list(token_lists[i]))
