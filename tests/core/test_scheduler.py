"""Token-budget scheduling, without a model: a fake runner returns fixed tokens."""

import pytest

from plait.cache.kv_manager import KVCacheManager
from plait.config import SchedulerConfig
from plait.core.request import Request
from plait.core.sched_output import ModelOutput, SampledToken
from plait.core.scheduler import Scheduler
from plait.params import SamplingParams


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=16, max_len=256, prefix=True):
    kv = KVCacheManager(num_blocks, block_size, prefix)
    return Scheduler(SchedulerConfig(max_num_seqs, budget), kv, max_len)


def req(rid, prompt_len, max_tokens=4, priority=0, arrival=0.0):
    return Request(rid, list(range(10, 10 + prompt_len)), SamplingParams(max_tokens=max_tokens, priority=priority),
                   max_tokens, frozenset({2}), arrival=arrival)


def run_step(s):
    out = s.schedule()
    fake = ModelOutput({c.request_id: [SampledToken(7)] for c in out.chunks if c.sample})
    s.update(out, fake)
    return out


def test_budget_decode_first_then_chunked_prefill():
    s = make(budget=10)
    s.add(req("a", 3, max_tokens=5, arrival=0))
    first = run_step(s)
    assert [(c.request_id, len(c.token_ids)) for c in first.chunks] == [("a", 3)]
    s.add(req("b", 30, arrival=1))
    second = run_step(s)
    # a's decode comes first, then b gets the rest of the budget as a prompt chunk.
    assert [(c.request_id, len(c.token_ids), c.sample) for c in second.chunks] == [("a", 1, True), ("b", 9, False)]
    assert second.num_tokens <= 10
    while s.has_unfinished():
        out = run_step(s)
        assert out.num_tokens <= 10
    assert s.kv.all_blocks_free()


def test_max_num_seqs_limits_running():
    s = make(max_num_seqs=2, budget=100)
    for i in range(4):
        s.add(req(f"r{i}", 4, arrival=i))
    out = s.schedule()
    assert {c.request_id for c in out.chunks} == {"r0", "r1"}


def test_preemption_recomputes_and_finishes_everything():
    s = make(num_blocks=6, block_size=4, budget=64)
    for i in range(3):
        s.add(req(f"r{i}", 6, max_tokens=10, arrival=i))
    preempted = 0
    steps = 0
    while s.has_unfinished():
        preempted += run_step(s).num_preempted
        steps += 1
        assert steps < 200
    assert preempted > 0 and s.num_preemptions == preempted
    assert s.kv.all_blocks_free()


def test_priority_runs_first_and_newest_lowest_priority_is_preempted():
    s = make(max_num_seqs=1, budget=100)
    s.add(req("low", 4, priority=5, arrival=0))
    s.add(req("high", 4, priority=-1, arrival=1))
    out = s.schedule()
    assert [c.request_id for c in out.chunks] == ["high"]


def test_when_kv_runs_out_the_lowest_priority_newest_request_is_preempted():
    # 4 blocks of 4 tokens: three 4-token prompts fill 3 blocks; the first decodes need a block each.
    s = make(num_blocks=4, block_size=4, budget=100)
    low_old, high, low_new = req("low-old", 4, 8, priority=1, arrival=0), req("high", 4, 8, priority=-1, arrival=1), \
        req("low-new", 4, 8, priority=1, arrival=2)
    for r in (low_old, high, low_new):
        s.add(r)
    run_step(s)  # all three prompts computed
    run_step(s)  # each decode needs a fresh block; only one is free
    assert (high.num_preemptions, low_old.num_preemptions, low_new.num_preemptions) == (0, 0, 1)
    assert s.num_preemptions >= 1
    while s.has_unfinished():
        run_step(s)
    assert all(len(r.output_token_ids) == 8 for r in (low_old, high, low_new))
    assert s.kv.all_blocks_free()


def test_request_that_can_never_fit_is_refused():
    s = make(num_blocks=4, block_size=4, max_len=256)
    with pytest.raises(ValueError, match="pool"):
        s.add(req("big", 10, max_tokens=10))
    with pytest.raises(ValueError, match="context length"):
        make(max_len=16).add(req("long", 10, max_tokens=10))


def test_length_finish_and_eos_stop():
    s = make()
    r = req("a", 3, max_tokens=2)
    s.add(r)
    while s.has_unfinished():
        run_step(s)
    assert r.finish_reason == "length" and r.output_token_ids == [7, 7]
    s2 = make()
    r2 = Request("b", [10, 11], SamplingParams(max_tokens=5), 5, frozenset({7}))
    s2.add(r2)
    run_step(s2)
    assert r2.finish_reason == "stop" and s2.kv.all_blocks_free()


def test_abort_frees_blocks():
    s = make()
    s.add(req("a", 9, max_tokens=50))
    run_step(s)
    s.abort("a")
    assert s.kv.all_blocks_free() and not s.has_unfinished()
    assert run_step(s).finished_ids == ["a"]


def test_waiting_requests_are_not_rehashed_every_step(monkeypatch):
    """A request waiting for KV memory hashes its (cached) prompt's blocks once, not again at every step."""
    from plait.cache import block_pool

    calls = []
    real_chain = block_pool.BlockKey.chain
    monkeypatch.setattr(block_pool.BlockKey, "chain", staticmethod(lambda p, t: calls.append(1) or real_chain(p, t)))
    s = make(num_blocks=40, block_size=4, budget=128)
    prompt = list(range(200, 264))
    s.add(Request("warm", prompt, SamplingParams(max_tokens=1), 1, frozenset({2}), arrival=0))
    while s.has_unfinished():
        run_step(s)  # the prompt's 16 blocks are now cached (and free)
    s.add(Request("hog", list(range(10, 106)), SamplingParams(max_tokens=40), 40, frozenset({2}), arrival=1))
    run_step(s)  # the hog holds 24 blocks and grows, leaving too few for the waiter
    s.add(Request("waiter", prompt + [7], SamplingParams(max_tokens=4), 4, frozenset({2}), arrival=2))
    calls.clear()
    waited = 0
    while s.requests["waiter"].status.value == "waiting":
        run_step(s)
        waited += 1
    assert waited > 10
    assert len(calls) < 17 + waited  # its blocks once, plus the hog's commits (one new block per 4 steps)
    while s.has_unfinished():
        run_step(s)
    assert s.kv.all_blocks_free()
