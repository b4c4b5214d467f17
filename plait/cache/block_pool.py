"""The pool of KV blocks: reference counts, LRU free list, and the prefix-cache index over full blocks.

Contract:
- A block is either in use (ref_count > 0) or free. A free block is either fresh (never handed out since the
  pool was made, so on a CPU its pages were never written and are not resident) or in the LRU queue of used
  blocks; a used free block may still hold cached KV (it has a key), and is then reusable by a prefix hit until
  it is handed out for new data.
- `allocate` hands out, by policy:
  - "reuse" (the default): a used free block holding no cached KV first; then a fresh block while the blocks
    ever handed out number fewer than U + max(U, num_blocks // 8), U being the blocks in use once this
    allocation is done (the prefix cache keeps as much as the running requests hold, and at least an eighth of
    the pool); beyond that, the least recently freed block. The pool's resident memory follows what requests
    use, not the pool's size.
  - "fill": fresh blocks first, the least recently freed block only when none is left: freed KV stays cached
    longest, and after enough distinct prompts the whole pool is resident.
  Either way a handed-out block forgets its cached key.
- `touch` takes a cached block for a new user: removes it from the free queue if it was free, ref_count += 1.
- `release` drops one reference; at zero the block goes to the back of the free queue (most recently used), or
  to its front when it holds no cached KV (nothing is lost by handing it out first).
Pure Python: no torch.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockKey:
    """Identity of a full block's content: a digest of the whole prefix up to it, plus its own tokens.

    The digest chains over every earlier block, so equal digests mean equal prefixes with overwhelming
    probability; the tokens are compared too, so a digest collision can never hand back wrong KV for this block.
    """

    digest: bytes
    tokens: tuple[int, ...]

    @staticmethod
    def chain(parent: "BlockKey | None", tokens: tuple[int, ...]) -> "BlockKey":
        h = hashlib.blake2b(digest_size=16)
        h.update(parent.digest if parent is not None else b"root")
        h.update(array("q", tokens).tobytes())
        return BlockKey(h.digest(), tokens)


POLICIES = ("reuse", "fill")


class BlockPool:
    def __init__(self, num_blocks: int, policy: str = "reuse") -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV pool needs at least 1 block, got {num_blocks}")
        if policy not in POLICIES:
            raise ValueError(f"kv_pool_policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        self.num_blocks = num_blocks
        self.policy = policy
        self.ref_counts = [0] * num_blocks
        self.keys: list[BlockKey | None] = [None] * num_blocks
        # Fresh blocks (never handed out) are exactly range(_next_fresh, num_blocks): handing them out in order keeps the
        # written part of the pool's tensor contiguous, so its resident pages follow the blocks in use.
        self._next_fresh = 0
        self._free: OrderedDict[int, None] = OrderedDict()  # used free blocks, least recently freed first
        self._cached: dict[BlockKey, int] = {}
        self.cache_floor = max(1, num_blocks // 8)
        self.evictions = 0

    @property
    def num_free(self) -> int:
        return len(self._free) + self.num_fresh

    @property
    def num_fresh(self) -> int:
        """Blocks never handed out: on a CPU their memory is not resident yet."""
        return self.num_blocks - self._next_fresh

    def allocate(self, count: int) -> list[int]:
        if count > self.num_free:
            raise RuntimeError(f"asked for {count} blocks with {self.num_free} free")
        blocks = []
        in_use_after = self.num_blocks - self.num_free + count
        for _ in range(count):
            if self._take_fresh(in_use_after):
                block = self._next_fresh
                self._next_fresh += 1
            else:
                block, _ = self._free.popitem(last=False)
            key = self.keys[block]
            if key is not None:
                del self._cached[key]
                self.keys[block] = None
                self.evictions += 1
            self.ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def free_blocks(self) -> set[int]:
        """Every free block id, fresh ones included (for invariant checks; O(num_blocks))."""
        return set(self._free) | set(range(self._next_fresh, self.num_blocks))

    def _take_fresh(self, in_use: int) -> bool:
        if not self.num_fresh:
            return False
        if not self._free or self.policy == "fill":
            return True
        if self.keys[next(iter(self._free))] is None:
            return False  # uncached free blocks sit at the front: reuse before growing
        # The written part of the pool (fresh blocks are handed out in order) may reach what requests use plus as
        # much again for the prefix cache, or plus an eighth of the pool when they use less.
        return self._next_fresh < in_use + max(in_use, self.cache_floor)

    def lookup(self, key: BlockKey) -> int | None:
        return self._cached.get(key)

    def touch(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self._free[block]
        self.ref_counts[block] += 1

    def release(self, block: int) -> None:
        if self.ref_counts[block] <= 0:
            raise RuntimeError(f"block {block} released more often than taken")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free[block] = None
            if self.keys[block] is None:
                self._free.move_to_end(block, last=False)  # holds nothing reusable: hand it out first

    def register(self, block: int, key: BlockKey) -> int:
        """Record that `block` holds KV for `key`. Returns the block that now represents the key
        (an earlier identical block wins, so the caller can keep using its own block either way)."""
        existing = self._cached.get(key)
        if existing is not None:
            return existing
        self._cached[key] = block
        self.keys[block] = key
        return block

    def clear_cache(self) -> None:
        """Forget every cached key, of free blocks and of blocks in use alike (their data stays with their
        users, but no later lookup finds it)."""
        self._cached.clear()
        self.keys = [None] * self.num_blocks
