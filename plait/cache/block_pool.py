"""The pool of KV blocks: reference counts, LRU free list, and the prefix-cache index over full blocks.

Contract:
- A block is either in use (ref_count > 0) or free. Free blocks sit in an LRU queue; a free block may still
  hold cached KV (it has a key), and is then reusable by a prefix hit until it is handed out for new data.
- `allocate` hands out the least recently freed block and forgets its cached key.
- `touch` takes a cached block for a new user: removes it from the free queue if it was free, ref_count += 1.
- `release` drops one reference; at zero the block goes to the back of the free queue (most recently used).
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


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV pool needs at least 1 block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.keys: list[BlockKey | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._cached: dict[BlockKey, int] = {}
        self.evictions = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} blocks with {len(self._free)} free")
        blocks = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            key = self.keys[block]
            if key is not None:
                del self._cached[key]
                self.keys[block] = None
                self.evictions += 1
            self.ref_counts[block] = 1
            blocks.append(block)
        return blocks

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
