"""Block tables per request over one BlockPool, with automatic prefix caching.

Contract for the scheduler:
- `match_prefix(tokens)` finds cached full blocks for a new request's tokens. It never covers the last token
  (that token must be computed to produce logits) and never returns a partial block, so a request never writes
  into a block it shares.
- `allocate(req, ...)` makes room for the tokens about to be computed; it either fully succeeds or changes
  nothing and returns False (the caller then preempts someone or waits).
- `commit(req, tokens, num_computed)` after a step registers the newly full blocks in the prefix cache.
- `free(req)` drops the request's references; shared blocks live on while other users hold them.
- `hold_prefix(tokens)` pins the cached full blocks of a prefix until `release_hold` (plait/cache/holds.py);
  `reset_prefix_cache` drops every hold.
- `fork(parent, child, num_tokens)` gives a child (another sample of the same prompt) the parent's full blocks
  and a fresh block for the partial last one, returning that (source, destination) pair for the runner to copy
  (copy-on-write: the child then writes only into blocks of its own).
- `announce(req, tokens, match)` after admission marks the full prompt blocks the request is about to compute as
  pending; a later `match_prefix` whose next block is pending names its owner, so the scheduler can let that
  request wait one step instead of computing the same prefix twice (BatchLLM-style sharing within a batch).
Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.cache.block_pool import BlockKey, BlockPool
from plait.cache.holds import Hold, PrefixHolds


@dataclass
class _Table:
    blocks: list[int] = field(default_factory=list)
    keys: list[BlockKey] = field(default_factory=list)  # keys of the leading full, registered blocks
    pending: list[BlockKey] = field(default_factory=list)  # announced keys this request owns
    epoch: int = 0  # the prefix-cache epoch its KV was computed in; older tables never register blocks


@dataclass
class PrefixMatch:
    blocks: list[int]
    keys: list[BlockKey]
    block_size: int
    # Another request is computing the next full block of this prefix right now.
    pending_owner: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.blocks) * self.block_size

    def truncated(self, num_tokens: int) -> "PrefixMatch":
        """The leading blocks that lie wholly before token `num_tokens` (a request that needs logits from
        there on must compute that position itself)."""
        keep = min(len(self.blocks), max(0, num_tokens) // self.block_size)
        if keep == len(self.blocks):
            return self
        return PrefixMatch(self.blocks[:keep], self.keys[:keep], self.block_size)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 pool_policy: str = "reuse") -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.pool = BlockPool(num_blocks, pool_policy)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._tables: dict[str, _Table] = {}
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # of which found cached
        self._pending: dict[BlockKey, str] = {}  # full blocks being computed -> the request computing them
        self.epoch = 0  # bumped by reset_prefix_cache
        self.holds = PrefixHolds(self.pool, block_size)

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, request_id: str) -> list[int]:
        table = self._tables.get(request_id)
        return table.blocks if table is not None else []

    def match_prefix(self, tokens: list[int], keys: list[BlockKey] | None = None) -> PrefixMatch:
        """Cached leading full blocks of `tokens` (never the block holding the last token). `keys`, when given,
        are the tokens' block keys already computed (Request.block_keys), so nothing is hashed again."""
        match = PrefixMatch([], [], self.block_size)
        if not self.enable_prefix_caching:
            return match
        parent = None
        for i in range((len(tokens) - 1) // self.block_size):
            if keys is not None:
                key = keys[i]
            else:
                key = BlockKey.chain(parent, tuple(tokens[i * self.block_size: (i + 1) * self.block_size]))
            block = self.pool.lookup(key)
            if block is None:
                match.pending_owner = self._pending.get(key)
                break
            match.blocks.append(block)
            match.keys.append(key)
            parent = key
        return match

    def hold_prefix(self, tokens: list[int], keep_free: int = 0) -> Hold:
        """Pin the leading cached full blocks of `tokens` (all of its full blocks, the one holding its last token
        too) until `release_hold`, leaving at least `keep_free` blocks unheld. The hold is incomplete when part
        of the prefix is not cached; ValueError when the prefix cache is off or the hold passes the bounds of
        plait/cache/holds.py."""
        if not self.enable_prefix_caching:
            raise ValueError("holding a prefix needs the prefix cache (enable_prefix_caching=True)")
        wanted = len(tokens) // self.block_size
        self.holds.check_size(wanted, keep_free)
        blocks, parent = [], None
        for i in range(wanted):
            parent = BlockKey.chain(parent, tuple(tokens[i * self.block_size: (i + 1) * self.block_size]))
            block = self.pool.lookup(parent)
            if block is None:
                break
            blocks.append(block)
        return self.holds.pin(blocks, wanted, keep_free)

    def release_hold(self, hold_id: int) -> bool:
        """Unpin a hold's blocks (evictable again once no request uses them). False if it was already gone."""
        return self.holds.release(hold_id)

    def record_lookup(self, num_tokens: int, match: PrefixMatch) -> None:
        """Count one admitted request's prefix lookup (deferred lookups are not counted twice)."""
        if self.enable_prefix_caching:
            self.prefix_queries += num_tokens
            self.prefix_hits += match.num_tokens

    def announce(self, request_id: str, tokens: list[int], match: PrefixMatch,
                 keys: list[BlockKey] | None = None) -> None:
        if not self.enable_prefix_caching:
            return
        table = self._tables[request_id]
        parent = match.keys[-1] if match.keys else None
        for i in range(len(match.keys), (len(tokens) - 1) // self.block_size):
            if keys is not None:
                parent = keys[i]
            else:
                parent = BlockKey.chain(parent, tuple(tokens[i * self.block_size: (i + 1) * self.block_size]))
            if parent not in self._pending:
                self._pending[parent] = request_id
                table.pending.append(parent)

    def allocate(self, request_id: str, num_computed: int, num_new: int,
                 prefix: PrefixMatch | None = None) -> bool:
        table = self._tables.get(request_id)
        fresh = table is None
        if fresh:
            table = _Table(epoch=self.epoch)
        taken = []
        if prefix is not None and prefix.blocks:
            for block in prefix.blocks:
                self.pool.touch(block)
                taken.append(block)
        need = self.blocks_for(num_computed + num_new) - len(table.blocks) - len(taken)
        if need > self.pool.num_free:
            for block in reversed(taken):
                self.pool.release(block)
            return False
        if taken:
            table.blocks.extend(taken)
            table.keys.extend(prefix.keys)
        if need > 0:
            table.blocks.extend(self.pool.allocate(need))
        if fresh:
            self._tables[request_id] = table
        return True

    def commit(self, request_id: str, tokens: list[int], num_computed: int) -> None:
        if not self.enable_prefix_caching:
            return
        table = self._tables[request_id]
        if table.epoch != self.epoch:
            return  # its KV predates a reset: it must never be served to a later request
        bs = self.block_size
        for i in range(len(table.keys), num_computed // bs):
            parent = table.keys[-1] if table.keys else None
            key = BlockKey.chain(parent, tuple(tokens[i * bs: (i + 1) * bs]))
            self.pool.register(table.blocks[i], key)
            table.keys.append(key)
            if self._pending.get(key) == request_id:
                del self._pending[key]  # computed: waiters now hit the cache

    def fork_blocks_needed(self, num_tokens: int) -> int:
        """Free blocks a fork at `num_tokens` takes: one for the copy of a partial last block, else none."""
        return 1 if num_tokens % self.block_size else 0

    def fork(self, parent_id: str, child_id: str, num_tokens: int) -> tuple[int, int] | None:
        """Give `child_id` (no table yet) the KV of the parent's first `num_tokens` tokens: its full blocks are
        shared (one more reference each), a partial last block is copied into a fresh block. Returns the
        (source, destination) block pair the runner must copy before the child's next forward, or None when
        `num_tokens` ends on a block boundary. The caller checks `fork_blocks_needed` against the free blocks."""
        parent = self._tables[parent_id]
        if child_id in self._tables:
            raise ValueError(f"request {child_id!r} already has KV blocks; only a fresh request can be forked")
        full, partial = divmod(num_tokens, self.block_size)
        if len(parent.blocks) < full + (1 if partial else 0):
            raise ValueError(f"request {parent_id!r} holds {len(parent.blocks)} blocks, fewer than {num_tokens} "
                             f"tokens need")
        if partial and self.pool.num_free < 1:
            raise RuntimeError("no free block for a fork's partial block: check fork_blocks_needed first")
        child = _Table(epoch=parent.epoch, keys=list(parent.keys[:full]))
        for block in parent.blocks[:full]:
            self.pool.touch(block)
            child.blocks.append(block)
        copy = None
        if partial:
            (fresh,) = self.pool.allocate(1)
            child.blocks.append(fresh)
            copy = (parent.blocks[full], fresh)
        self._tables[child_id] = child
        return copy

    def free(self, request_id: str) -> None:
        table = self._tables.pop(request_id, None)
        if table is None:
            return
        for key in table.pending:
            if self._pending.get(key) == request_id:
                del self._pending[key]
        # Tail blocks first, so that under LRU the end of a sequence is evicted before its shared beginning.
        for block in reversed(table.blocks):
            self.pool.release(block)

    def reset_prefix_cache(self) -> None:
        """No later request may hit KV computed before this call: forget every key (blocks in use too, or they
        would come back into the cache when released), every announcement, and stop running requests from
        registering the blocks they fill later."""
        self.pool.clear_cache()
        self._pending.clear()
        self.epoch += 1
        self.holds.release_all()  # a pin on KV no later request may hit would only keep memory from use

    def all_blocks_free(self) -> bool:
        """The leak invariant: every block is free (cached-but-unused blocks count as free)."""
        return (self.pool.num_free == self.pool.num_blocks and not self._tables and not self._pending
                and not len(self.holds))
