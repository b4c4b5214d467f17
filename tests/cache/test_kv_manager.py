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
