"""Prefix-aware placement, without Ray: offline shares and the serving router's choice."""

from __future__ import annotations

import random

import pytest

from plait.cache.block_pool import BlockKey
from plait.distributed.placement import PrefixRouter, block_digests, split_by_prefix


def test_block_digests_chain_like_the_block_pool():
    tokens = list(range(40))
    digests = block_digests(tokens, 16)
    assert len(digests) == 2  # the partial third block has no digest
    first = BlockKey.chain(None, tuple(tokens[:16]))
    assert digests == [first.digest, BlockKey.chain(first, tuple(tokens[16:32])).digest]
    assert block_digests(tokens[:15], 16) == []


def test_split_keeps_prefix_groups_together_and_balances():
    rng = random.Random(0)
    groups = [[rng.randrange(1000) for _ in range(32)] for _ in range(4)]
    prompts = [groups[i % 4] + [rng.randrange(1000) for _ in range(8)] for i in range(40)]
    shares = split_by_prefix(prompts, [len(p) for p in prompts], 2)
    assert sorted(i for s in shares for i in s) == list(range(40))
    assert [len(s) for s in shares] == [20, 20]
    for share in shares:  # each of the 4 prefix groups lives on one replica only
        assert len({i % 4 for i in share}) == 2


def test_split_more_replicas_than_prompts_and_bad_n():
    shares = split_by_prefix([[1, 2], [3]], [1, 1], 3)
    assert sorted(i for s in shares for i in s) == [0, 1] and sum(1 for s in shares if s) == 2
    assert split_by_prefix([], [], 2) == [[], []]
    with pytest.raises(ValueError, match="n must be >= 1"):
        split_by_prefix([[1]], [1], 0)


def test_split_one_huge_group_is_still_balanced():
    prefix = list(range(64))
    prompts = [prefix + [i] for i in range(10)]
    shares = split_by_prefix(prompts, [1] * 10, 2)
    assert [len(s) for s in shares] == [5, 5]  # splitting the group beats idling a replica


def test_router_prefers_cached_prefix_then_least_loaded():
    router = PrefixRouter(2, capacity_blocks=100, max_imbalance=2)
    a, b = block_digests(list(range(64)), 16), block_digests(list(range(100, 164)), 16)
    first = router.choose(a, [True, True])
    router.start(first, a)
    second = router.choose(b, [True, True])
    assert second != first  # no prefix known: the idle replica
    router.start(second, b)
    assert router.choose(a[:2] + block_digests([7] * 32, 16)[2:], [True, True]) == first
    assert router.prefix_routed == 1
    # too busy: a prefix hit is not worth an imbalance above max_imbalance
    for _ in range(3):
        router.start(first, a)
    assert router.choose(a, [True, True]) == second
    # a dead replica is never chosen, and with none alive the router says so
    assert router.choose(a, [False, True]) == second
    with pytest.raises(RuntimeError, match="no replica is alive"):
        router.choose(a, [False, False])


def test_router_forgets_beyond_capacity():
    router = PrefixRouter(1, capacity_blocks=2)
    digests = block_digests(list(range(64)), 16)
    router.start(0, digests)
    assert router.matched_blocks(0, digests) == 0  # the first blocks were evicted: no false claim
    router.forget(0)
    assert not router.seen[0]
