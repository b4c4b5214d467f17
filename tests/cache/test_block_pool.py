"""Which free block a new one comes from: "reuse" keeps resident memory to what requests use, "fill" keeps freed
KV cached longest. Without torch."""

import pytest

from plait.cache.block_pool import BlockKey, BlockPool


def key(i: int) -> BlockKey:
    return BlockKey.chain(None, (i,))


def run_and_cache(pool: BlockPool, count: int, first_key: int) -> list[int]:
    """A request that fills `count` blocks, registers each in the prefix cache and ends."""
    blocks = pool.allocate(count)
    for i, block in enumerate(blocks):
        pool.register(block, key(first_key + i))
    for block in reversed(blocks):
        pool.release(block)
    return blocks


def test_reuse_hands_out_freed_uncached_blocks_before_fresh_ones():
    pool = BlockPool(64)
    first = pool.allocate(4)
    for block in first:
        pool.release(block)  # no key: nothing cached in them
    assert sorted(pool.allocate(4)) == sorted(first)
    assert pool.num_fresh == 60


def test_reuse_grows_to_use_plus_the_floor_then_evicts_lru():
    pool = BlockPool(64)  # floor: 8 blocks for the cache beyond what requests use
    assert pool.cache_floor == 8
    for r in range(5):  # 5 requests of 2 blocks, one at a time: 2 in use + 8 cached fit in 10 written blocks
        run_and_cache(pool, 2, 100 * r)
    assert pool.num_fresh == 54 and pool.evictions == 0
    assert all(pool.lookup(key(100 * r)) is not None for r in range(5))
    # Written blocks are at 2 + 8: the next request reuses the least recently freed cached blocks.
    run_and_cache(pool, 2, 900)
    assert pool.num_fresh == 54 and pool.evictions == 2
    assert pool.lookup(key(0)) is None and pool.lookup(key(1)) is None  # request 0's blocks, freed first
    assert pool.lookup(key(100)) is not None and pool.lookup(key(900)) is not None


def test_reuse_lets_the_cache_hold_as_much_as_requests_use():
    pool = BlockPool(64)  # floor 8
    run_and_cache(pool, 8, 0)  # 8 cached free blocks: at the floor
    running = pool.allocate(20)  # 20 in use: 20 more may be written for the cache, so this grew
    assert pool.evictions == 0 and pool.num_fresh == 36
    more = pool.allocate(10)  # 30 in use, 38 written < 60: still grows, no eviction
    assert pool.evictions == 0 and pool.num_fresh == 26
    for block in running + more:
        pool.release(block)
    assert pool.num_free == 64 and pool.evictions == 0


def test_fill_hands_out_every_fresh_block_before_evicting():
    pool = BlockPool(16, policy="fill")
    for r in range(8):
        run_and_cache(pool, 2, 100 * r)
    assert pool.num_fresh == 0 and pool.evictions == 0
    run_and_cache(pool, 2, 900)  # now the least recently freed go
    assert pool.evictions == 2 and pool.lookup(key(0)) is None and pool.lookup(key(100)) is not None


@pytest.mark.parametrize("policy", ["reuse", "fill"])
def test_touching_a_cached_free_block_and_clearing_keep_the_counts_exact(policy):
    pool = BlockPool(32, policy)
    blocks = run_and_cache(pool, 4, 0)
    pool.touch(pool.lookup(key(1)))  # a prefix hit takes it back out of the free queue
    assert pool.num_free == 31 and pool.ref_counts[blocks[1]] == 1
    pool.release(blocks[1])
    pool.clear_cache()
    assert pool.free_blocks() == set(range(32))
    taken = pool.allocate(4)  # after a clear nothing is cached: the used blocks come back first under reuse
    if policy == "reuse":
        assert sorted(taken) == sorted(blocks)
    for block in taken:
        pool.release(block)
    assert pool.num_free == 32


def test_unknown_policy_is_a_value_error():
    with pytest.raises(ValueError, match="kv_pool_policy must be one of reuse, fill"):
        BlockPool(8, policy="lru")
