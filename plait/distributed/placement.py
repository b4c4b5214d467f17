"""Where prompts go: prefix-aware placement over data-parallel replicas. Pure Python (no Ray, no torch).

Two users:
- offline (`split_by_prefix`): one batch of prompts is cut into N shares of about equal cost such that prompts
  sharing a prefix land on the same replica, where the prefix cache computes the shared blocks once;
- serving (`PrefixRouter`): each request goes to the replica that most likely still holds the longest cached
  prefix of it, else to the least loaded one.

Both speak the replicas' own language for prefixes: the chained digests of full KV blocks (`BlockKey.chain`),
so "cached prefix" means exactly what the replica's prefix cache can reuse.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from plait.cache.block_pool import BlockKey


def block_digests(token_ids: Sequence[int], block_size: int) -> list[bytes]:
    """The prefix-cache digest of each full block of `token_ids`, chained as the replica's block pool does."""
    key: BlockKey | None = None
    digests = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        key = BlockKey.chain(key, tuple(token_ids[start:start + block_size]))
        digests.append(key.digest)
    return digests


# A cut may move off the balanced point by this fraction of one share's cost to avoid splitting a prefix group.
BALANCE_TOLERANCE = 0.1


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def split_by_prefix(prompts: Sequence[Sequence[int]], costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices of `prompts` for each of `n` replicas: shares of about equal total cost, shared prefixes together.

    Sorting the prompts by their tokens puts every group of prompts with a common prefix next to each other;
    cutting the sorted order into n contiguous runs then splits at most one group per cut. Each cut may move
    off its balanced position by up to BALANCE_TOLERANCE of a share's cost, to where the neighbours share the
    least, so a group is split only when keeping it whole would unbalance the shares by more than that.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(prompts) != len(costs):
        raise ValueError(f"{len(prompts)} prompts but {len(costs)} costs")
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    m = len(order)
    cumulative = [0.0]
    for i in order:
        cumulative.append(cumulative[-1] + costs[i])
    total = cumulative[-1]
    # shared[p]: tokens the prompts at sorted positions p-1 and p have in common (what a cut at p splits)
    shared = [0] + [_common_prefix(prompts[order[p - 1]], prompts[order[p]]) for p in range(1, m)] + [0]
    tolerance = BALANCE_TOLERANCE * total / n
    cuts = [0]
    for k in range(1, n):
        target = total * k / n
        # every share gets at least one prompt while there are enough prompts
        low, high = (cuts[-1] + 1, m - (n - k)) if m >= n else (cuts[-1], m)
        positions = range(low, high + 1)
        ideal = min(positions, key=lambda p: abs(cumulative[p] - target))
        near = [p for p in positions if abs(cumulative[p] - target) <= tolerance] or [ideal]
        cuts.append(min(near, key=lambda p: (shared[p], abs(cumulative[p] - target))))
    cuts.append(m)
    return [order[cuts[k]:cuts[k + 1]] for k in range(n)]


class PrefixRouter:
    """Which replica a request goes to: longest cached prefix, else least loaded.

    The router cannot see the replicas' caches; it remembers the block digests of the prompts it sent to each
    replica, in LRU order, at most `capacity` blocks per replica (its KV pool size), which mirrors what the
    replica's own LRU keeps. It can be wrong (a replica evicted early, or finished a request nobody repeats):
    a wrong guess costs one prefill, never a wrong answer.

    A prefix hit is taken only while that replica is not more than `max_imbalance` requests busier than the
    least loaded one, so a popular system prompt cannot pile every request onto one replica.
    """

    def __init__(self, num_replicas: int, capacity_blocks: int, max_imbalance: int = 8) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if max_imbalance < 0:
            raise ValueError(f"max_imbalance must be >= 0, got {max_imbalance}")
        self.capacity = capacity_blocks
        self.max_imbalance = max_imbalance
        self.seen: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in range(num_replicas)]
        self.load = [0] * num_replicas  # requests in flight
        self.routed = [0] * num_replicas
        self.prefix_routed = 0  # requests placed by a prefix match (for tests and stats)

    def matched_blocks(self, replica: int, digests: Sequence[bytes]) -> int:
        seen = self.seen[replica]
        count = 0
        for d in digests:
            if d not in seen:
                break
            count += 1
        return count

    def choose(self, digests: Sequence[bytes], alive: Sequence[bool]) -> int:
        """The replica for a prompt with these block digests; raises RuntimeError when none is alive."""
        candidates = [r for r, ok in enumerate(alive) if ok]
        if not candidates:
            raise RuntimeError("no replica is alive")
        least = min(candidates, key=lambda r: (self.load[r], self.routed[r]))
        best, best_blocks = least, 0
        for r in candidates:
            blocks = self.matched_blocks(r, digests)
            if blocks > best_blocks and self.load[r] <= self.load[least] + self.max_imbalance:
                best, best_blocks = r, blocks
        if best_blocks:
            self.prefix_routed += 1
        return best

    def forget_all(self) -> None:
        """The replicas' prefix caches were reset: no prefix is known anywhere."""
        for seen in self.seen:
            seen.clear()

    def start(self, replica: int, digests: Sequence[bytes]) -> None:
        """A request with these digests was sent to `replica`."""
        self.load[replica] += 1
        self.routed[replica] += 1
        seen = self.seen[replica]
        for d in digests:
            seen[d] = None
            seen.move_to_end(d)
        while len(seen) > self.capacity:
            seen.popitem(last=False)

    def finish(self, replica: int) -> None:
        self.load[replica] -= 1

    def forget(self, replica: int) -> None:
        """The replica died: its cache is gone."""
        self.seen[replica].clear()
