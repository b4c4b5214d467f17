"""The KV block pool and prefix cache, without torch."""

import subprocess
import sys

import pytest

from plait.cache.block_pool import BlockKey, BlockPool
from plait.cache.kv_manager import KVCacheManager


def test_cache_and_core_never_import_torch():
    code = "import sys, plait.cache.kv_manager, plait.core.scheduler, plait.core.engine_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_allocate_free_returns_every_block():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    assert kv.allocate("a", 0, 10)  # 3 blocks
    assert kv.allocate("b", 0, 16)  # 4 blocks
    assert kv.num_free_blocks == 1
    assert not kv.allocate("c", 0, 8)  # needs 2: refused, nothing changes
    assert kv.num_free_blocks == 1 and kv.block_table("c") == []
    assert kv.allocate("a", 10, 2)  # still within block 3
    assert len(kv.block_table("a")) == 3
    kv.free("a")
    kv.free("b")
    assert kv.all_blocks_free()


def test_prefix_hit_shares_blocks_and_caps_one_token_short():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = list(range(100, 112))  # exactly 3 full blocks
    assert kv.allocate("a", 0, len(prompt))
    kv.commit("a", prompt, len(prompt))
    match = kv.match_prefix(prompt)
    # The last token must be computed, so the last (full) block is not reused: 2 blocks, 8 tokens.
    assert match.num_tokens == 8
    assert match.blocks == kv.block_table("a")[:2]
    assert kv.allocate("b", match.num_tokens, 4, match)
    assert kv.block_table("b")[:2] == kv.block_table("a")[:2]
    assert kv.pool.ref_counts[match.blocks[0]] == 2
    kv.free("a")
    kv.free("b")
    assert kv.all_blocks_free()
    # Freed blocks stay cached until reused.
    again = kv.match_prefix(prompt + [1])
    assert again.num_tokens == 12


def test_different_prefix_same_block_tokens_do_not_match():
    kv = KVCacheManager(num_blocks=16, block_size=2)
    a = [1, 2, 3, 4, 5]
    kv.allocate("a", 0, len(a))
    kv.commit("a", a, len(a))
    b = [9, 9, 3, 4, 5]  # second block has the same tokens but a different parent
    assert kv.match_prefix(b).num_tokens == 0


def test_lru_eviction_reuses_oldest_free_block_and_forgets_its_key():
    kv = KVCacheManager(num_blocks=2, block_size=2)
    kv.allocate("a", 0, 3)
    kv.commit("a", [1, 2, 3], 2)
    kv.free("a")
    assert kv.match_prefix([1, 2, 3]).num_tokens == 2
    kv.allocate("b", 0, 4)  # needs both blocks: the cached one is evicted
    assert kv.match_prefix([1, 2, 3]).num_tokens == 0
    assert kv.pool.evictions == 1
    kv.free("b")
    assert kv.all_blocks_free()


def test_failed_allocation_with_prefix_changes_nothing():
    kv = KVCacheManager(num_blocks=3, block_size=2)
    kv.allocate("a", 0, 5)
    kv.commit("a", [1, 2, 3, 4, 5], 4)
    kv.free("a")
    match = kv.match_prefix([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert match.num_tokens == 4
    assert not kv.allocate("b", 4, 5, match)  # needs 3 more blocks, only 1 left besides the 2 matched
    assert kv.all_blocks_free()


def test_block_key_compares_tokens_not_only_digest():
    k1 = BlockKey(b"same", (1, 2))
    k2 = BlockKey(b"same", (3, 4))
    assert k1 != k2
    pool = BlockPool(2)
    pool.register(0, k1)
    assert pool.lookup(k2) is None


def test_release_too_often_raises():
    pool = BlockPool(1)
    (b,) = pool.allocate(1)
    pool.release(b)
    with pytest.raises(RuntimeError):
        pool.release(b)


@pytest.mark.parametrize("free_parent_first", [True, False])
@pytest.mark.parametrize("block_size", [1, 4, 5])
def test_fork_at_every_offset_shares_full_blocks_and_copies_the_partial_one(block_size, free_parent_first):
    for num_tokens in range(1, 3 * block_size + 1):  # k * block_size + r for every r, k = 0..2
        kv = KVCacheManager(num_blocks=16, block_size=block_size)
        prompt = list(range(100, 100 + num_tokens))
        assert kv.allocate("parent", 0, num_tokens)
        kv.commit("parent", prompt, num_tokens)
        parent_table = list(kv.block_table("parent"))
        refs_before = list(kv.pool.ref_counts)
        full, partial = divmod(num_tokens, block_size)
        assert kv.fork_blocks_needed(num_tokens) == (1 if partial else 0)
        free_before = kv.num_free_blocks

        copy = kv.fork("parent", "child", num_tokens)

        child_table = kv.block_table("child")
        assert kv.block_table("parent") == parent_table  # the parent's table is untouched
        assert child_table[:full] == parent_table[:full]
        for block in parent_table[:full]:
            assert kv.pool.ref_counts[block] == refs_before[block] + 1
        if partial:
            fresh = child_table[full]
            assert fresh not in parent_table and len(child_table) == full + 1
            assert copy == (parent_table[full], fresh)
            assert kv.pool.ref_counts[fresh] == 1 and kv.pool.ref_counts[parent_table[full]] == 1
            assert kv.num_free_blocks == free_before - 1
        else:
            assert copy is None and len(child_table) == full and kv.num_free_blocks == free_before
        first, second = ("parent", "child") if free_parent_first else ("child", "parent")
        kv.free(first)
        assert kv.block_table(second) == (parent_table if second == "parent" else child_table)
        assert all(kv.pool.ref_counts[b] == 1 for b in kv.block_table(second))
        kv.free(second)
        assert kv.all_blocks_free(), num_tokens


def test_forked_child_extends_into_its_own_blocks_and_commits_like_its_parent():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = list(range(100, 110))  # 2 full blocks + 2 tokens
    assert kv.allocate("parent", 0, 10)
    kv.commit("parent", prompt, 10)
    kv.fork("parent", "child", 10)
    parent_blocks = set(kv.block_table("parent"))
    assert kv.allocate("child", 10, 4)  # its block 2 (the copy) fills up, then a new block 3
    assert not set(kv.block_table("child")[2:]) & parent_blocks
    kv.commit("child", prompt + [7, 8, 9, 10], 14)
    # the child's full blocks, shared and own, are the prefix cache's: a later prompt hits all three
    assert kv.match_prefix(prompt + [7, 8, 9, 10, 11]).blocks == kv.block_table("child")[:3]
    kv.free("parent")
    kv.free("child")
    assert kv.all_blocks_free()


def test_fork_refuses_a_child_with_blocks_a_short_parent_or_no_free_block():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    assert kv.allocate("parent", 0, 6)  # 2 blocks
    assert kv.allocate("other", 0, 1)  # the last free block
    with pytest.raises(ValueError, match="already has KV blocks"):
        kv.fork("parent", "other", 6)
    with pytest.raises(ValueError, match="fewer than"):
        kv.fork("parent", "child", 9)
    with pytest.raises(RuntimeError, match="fork_blocks_needed"):
        kv.fork("parent", "child", 6)
    assert kv.block_table("child") == [] and kv.pool.ref_counts == [1, 1, 1]
    assert kv.fork("parent", "child", 4) is None  # a whole block: shared, nothing to copy
    for rid in ("parent", "other", "child"):
        kv.free(rid)
    assert kv.all_blocks_free()
