"""Prefix holds: a caller pins the cached full blocks of a prefix it will branch from again, so LRU eviction
cannot take them between the steps of a search.

Contract:
- `pin(blocks, wanted_blocks)` takes one extra reference on each block (BlockPool.touch): a held block is in use,
  never on the free list, so `allocate` can never evict it. The blocks keep their prefix-cache keys, so every
  request that starts with the prefix hits them.
- Holds may pin at most `max_blocks` distinct blocks in all (half the pool by default), minus what the caller
  asks to keep free (`keep_free`: the engine keeps room for the longest request it accepts, so no admissible
  request can wait forever behind holds), and there are at most `max_holds` of them: a hold that would pass
  either bound raises ValueError and pins nothing.
- `release(hold_id)` drops the hold's references: blocks no other user holds go back to the free list (as most
  recently used) and are evictable again. Releasing twice, or a hold that `release_all` already dropped, does
  nothing and returns False.
- `release_all()` drops every hold (reset_prefix_cache uses it: a reset forgets every cached prefix, so a pin
  could only keep memory that no later request may read).
Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from plait.cache.block_pool import BlockPool

MAX_HELD_FRACTION = 0.5  # of the pool's blocks that holds may pin together
MAX_HOLDS = 1024


@dataclass(frozen=True)
class Hold:
    """One pin: `blocks` are the prefix's leading full blocks found cached when it was taken."""

    hold_id: int
    blocks: tuple[int, ...]
    block_size: int
    wanted_blocks: int  # full blocks of the prefix the caller asked for

    @property
    def num_tokens(self) -> int:
        """Prefix tokens whose KV the hold keeps resident."""
        return len(self.blocks) * self.block_size

    @property
    def complete(self) -> bool:
        """Every full block of the prefix is pinned (False: part of it was not cached when pinned)."""
        return len(self.blocks) == self.wanted_blocks


class PrefixHolds:
    def __init__(self, pool: BlockPool, block_size: int, max_blocks: int | None = None,
                 max_holds: int = MAX_HOLDS) -> None:
        self.pool = pool
        self.block_size = block_size
        self.max_blocks = int(pool.num_blocks * MAX_HELD_FRACTION) if max_blocks is None else max_blocks
        self.max_holds = max_holds
        self._holds: dict[int, Hold] = {}
        self._pins: dict[int, int] = {}  # block -> number of holds pinning it
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._holds)

    @property
    def num_held_blocks(self) -> int:
        """Distinct blocks pinned by at least one hold."""
        return len(self._pins)

    def limit(self, keep_free: int = 0) -> int:
        """The most distinct blocks holds may pin together while `keep_free` blocks stay unheld."""
        return max(0, min(self.max_blocks, self.pool.num_blocks - keep_free))

    def check_size(self, wanted_blocks: int, keep_free: int = 0) -> None:
        """ValueError if a prefix of `wanted_blocks` full blocks could never be held."""
        if wanted_blocks < 1:
            raise ValueError(f"a held prefix must cover at least one full KV block ({self.block_size} tokens)")
        if wanted_blocks > self.limit(keep_free):
            raise ValueError(
                f"the prefix has {wanted_blocks} full KV blocks ({wanted_blocks * self.block_size} tokens) but "
                f"holds may pin at most {self.limit(keep_free)} of the pool's {self.pool.num_blocks} blocks "
                f"(at most {self.max_blocks}, keeping {keep_free} free for the longest request; a smaller "
                f"max_model_len or more kv_cache_memory leaves more)")

    def pin(self, blocks: list[int], wanted_blocks: int, keep_free: int = 0) -> Hold:
        self.check_size(wanted_blocks, keep_free)
        if len(self._holds) >= self.max_holds:
            raise ValueError(f"at most {self.max_holds} prefix holds may exist at once; release some first")
        new = len({b for b in blocks if b not in self._pins})
        if self.num_held_blocks + new > self.limit(keep_free):
            raise ValueError(
                f"holding this prefix would pin {self.num_held_blocks + new} KV blocks; holds may pin at most "
                f"{self.limit(keep_free)} of the pool's {self.pool.num_blocks} ({self.num_held_blocks} already "
                f"held); release some holds first")
        for block in blocks:
            self.pool.touch(block)
            self._pins[block] = self._pins.get(block, 0) + 1
        hold = Hold(self._next_id, tuple(blocks), self.block_size, wanted_blocks)
        self._next_id += 1  # never reused, so a stale handle can never release a newer hold
        self._holds[hold.hold_id] = hold
        return hold

    def release(self, hold_id: int) -> bool:
        hold = self._holds.pop(hold_id, None)
        if hold is None:
            return False
        # Tail blocks first, like KVCacheManager.free: under LRU the end of a prefix goes before its beginning.
        for block in reversed(hold.blocks):
            self._pins[block] -= 1
            if self._pins[block] == 0:
                del self._pins[block]
            self.pool.release(block)
        return True

    def release_all(self) -> int:
        ids = list(self._holds)
        for hold_id in ids:
            self.release(hold_id)
        return len(ids)
