"""Prefix holds on the KV manager, without torch: pinned blocks survive eviction pressure, release frees them."""

import pytest

from plait.cache.kv_manager import KVCacheManager


def compute(kv, request_id, tokens):
    """Run a request over `tokens` through the cache (hits reused, the rest allocated and committed), then end it."""
    match = kv.match_prefix(tokens)
    assert kv.allocate(request_id, match.num_tokens, len(tokens) - match.num_tokens, match)
    kv.commit(request_id, tokens, len(tokens))
    kv.free(request_id)
    return match.num_tokens


def test_held_prefix_survives_pressure_that_evicts_an_unheld_one():
    kv = KVCacheManager(num_blocks=12, block_size=4, pool_policy="fill")  # LRU over the whole pool
    held, unheld = list(range(100, 116)), list(range(200, 216))  # 4 full blocks each
    compute(kv, "h", held)
    compute(kv, "u", unheld)
    hold = kv.hold_prefix(held)
    assert hold.complete and hold.num_tokens == 16 and kv.holds.num_held_blocks == 4
    assert kv.num_free_blocks == 8
    for i in range(3):  # 8 fresh blocks each: every unpinned block is handed out and its cached KV evicted
        compute(kv, f"p{i}", list(range(1000 * (i + 1), 1000 * (i + 1) + 32)))
    assert compute(kv, "h2", held + [1]) == 16  # every held block is still a hit
    assert compute(kv, "u2", unheld + [1]) == 0
    assert kv.release_hold(hold.hold_id)
    assert not kv.release_hold(hold.hold_id)  # twice: nothing happens
    assert kv.all_blocks_free() and kv.num_free_blocks == 12
    for i in range(2):  # released blocks are evictable again
        compute(kv, f"q{i}", list(range(5000 * (i + 1), 5000 * (i + 1) + 48)))
    assert kv.match_prefix(held + [1]).num_tokens == 0


def test_partial_hold_pins_the_cached_run_and_the_last_full_block_counts():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prefix = list(range(50, 62))  # 3 full blocks
    compute(kv, "a", prefix[:8])
    hold = kv.hold_prefix(prefix + [7, 7])  # 3 full blocks wanted; the partial tail is never held
    assert not hold.complete and hold.num_tokens == 8 and hold.wanted_blocks == 3
    compute(kv, "b", prefix)
    whole = kv.hold_prefix(prefix)  # the block holding the prefix's last token is held too
    assert whole.complete and whole.num_tokens == 12
    assert kv.holds.num_held_blocks == 3
    kv.release_hold(hold.hold_id)
    kv.release_hold(whole.hold_id)
    assert kv.all_blocks_free()


def test_bounds_raise_and_pin_nothing():
    kv = KVCacheManager(num_blocks=8, block_size=2, pool_policy="fill")  # holds may pin 4 blocks
    with pytest.raises(ValueError, match="at least one full KV block"):
        kv.hold_prefix([1])
    with pytest.raises(ValueError, match="at most 4 of the pool's 8 blocks"):
        kv.hold_prefix(list(range(10)))
    compute(kv, "a", list(range(1, 7)))
    compute(kv, "b", list(range(11, 15)))
    first = kv.hold_prefix(list(range(1, 7)))  # 3 blocks
    again = kv.hold_prefix(list(range(1, 7)))  # the same blocks again: no new block pinned
    assert kv.holds.num_held_blocks == 3 and kv.pool.ref_counts[first.blocks[0]] == 2
    with pytest.raises(ValueError, match="would pin 5 KV blocks"):
        kv.hold_prefix(list(range(11, 15)))
    assert kv.holds.num_held_blocks == 3 and len(kv.holds) == 2
    kv.release_hold(first.hold_id)
    kv.release_hold(again.hold_id)
    assert kv.all_blocks_free()
    with pytest.raises(ValueError, match="at most 2 of the pool's 8 blocks"):
        kv.hold_prefix(list(range(1, 7)), keep_free=6)  # room kept for a 6-block request
    off = KVCacheManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        off.hold_prefix([1, 2, 3])


def test_reset_drops_every_hold_and_no_later_hit():
    kv = KVCacheManager(num_blocks=8, block_size=2)
    tokens = list(range(1, 7))
    compute(kv, "a", tokens)
    hold = kv.hold_prefix(tokens)
    kv.reset_prefix_cache()
    assert kv.all_blocks_free() and len(kv.holds) == 0
    assert kv.match_prefix(tokens + [1]).num_tokens == 0
    assert not kv.release_hold(hold.hold_id)  # a stale handle after a reset does nothing
    assert kv.all_blocks_free()


def test_allocation_never_takes_a_held_block():
    kv = KVCacheManager(num_blocks=6, block_size=2)
    compute(kv, "a", [1, 2, 3, 4])
    hold = kv.hold_prefix([1, 2, 3, 4])
    assert kv.num_free_blocks == 4
    assert not kv.allocate("big", 0, 10)  # 5 blocks: refused, the pinned 2 are not free
    assert kv.allocate("fits", 0, 8)
    assert not set(kv.block_table("fits")) & set(hold.blocks)
    kv.free("fits")
    kv.release_hold(hold.hold_id)
    assert kv.all_blocks_free()
