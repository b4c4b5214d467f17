"""Aborting one sample of an n > 1 request: its siblings go on unchanged, the pool is full again afterwards."""

import pytest

from plait import SamplingParams
from tests.engine.test_llm import prompts

SEEDED = SamplingParams(n=4, max_tokens=20, temperature=1.0, seed=7, ignore_eos=True)


def run(core, request_id, prompt, params, abort_at=None, sample_index=None):
    """Drive the core until the request ends; abort `sample_index` after `abort_at` steps. Returns (tokens per
    sample, finish reasons, the output the abort returned)."""
    core.add_request(request_id, prompt, params)
    tokens = [[] for _ in range(params.n)]
    reasons = [None] * params.n
    aborted = None
    steps = 0
    while core.has_unfinished():
        if steps == abort_at:
            aborted = core.abort(request_id, sample_index)
            for delta in aborted.samples:
                reasons[delta.index] = delta.finish_reason
        for out in core.step():
            for delta in out.samples:
                tokens[delta.index] += delta.token_ids
                reasons[delta.index] = delta.finish_reason or reasons[delta.index]
        steps += 1
    return tokens, reasons, aborted


def test_siblings_unchanged_and_request_ends_when_all_have(make_engine):
    llm = make_engine()
    core = llm.engine
    prompt = prompts(1, seed=5, lo=30, hi=30)[0]
    full, reasons, _ = run(core, "plain", prompt, SEEDED)
    assert reasons == ["length"] * 4
    cut, reasons, aborted = run(core, "cut", prompt, SEEDED, abort_at=6, sample_index=2)
    assert not aborted.finished and [d.index for d in aborted.samples] == [2]
    assert reasons == ["length", "length", "abort", "length"]
    for i in (0, 1, 3):
        assert cut[i] == full[i]  # seeded siblings are untouched by the abort
    assert 0 < len(cut[2]) < 20 and cut[2] == full[2][:len(cut[2])]
    assert core.scheduler.kv.all_blocks_free() and not core.has_unfinished()


def test_aborting_the_last_running_sample_finishes_the_request(make_engine):
    core = make_engine().engine
    params = SamplingParams(n=2, max_tokens=30, temperature=1.0, seed=1, ignore_eos=True)
    core.add_request("r", prompts(1)[0], params)
    core.step()
    first = core.abort("r", 0)
    assert not first.finished
    assert core.abort("r", 0) is None  # already ended: nothing to report
    last = core.abort("r", 1)
    assert last.finished and [d.finish_reason for d in last.samples] == ["abort"]
    assert not core.has_unfinished() and core.scheduler.kv.all_blocks_free()


def test_sample_index_out_of_range_raises(make_engine):
    core = make_engine().engine
    core.add_request("r", prompts(1)[0], SamplingParams(n=3, max_tokens=4))
    for bad in (3, -1, True, "1"):
        with pytest.raises(ValueError, match=r"sample_index must be an integer in \[0, 3\)"):
            core.abort("r", bad)
    assert core.abort("unknown", 0) is None
    core.abort("r")
    assert core.scheduler.kv.all_blocks_free()


def test_abort_the_sample_computing_the_shared_prompt_mid_prefill(make_engine):
    """Sample 0 computes the prompt its siblings wait for (chunked prefill); aborting it mid-way lets a sibling
    take over: the others still finish with their own seeded tokens and every block comes back."""
    core = make_engine(max_num_batched_tokens=16, block_size=4).engine
    prompt = prompts(1, seed=8, lo=60, hi=60)[0]
    params = SamplingParams(n=3, max_tokens=10, temperature=1.0, seed=4, ignore_eos=True)
    full, _, _ = run(core, "plain", prompt, params)
    core.reset_prefix_cache()  # the prompt must be computed again, in chunks
    cut, reasons, aborted = run(core, "cut", prompt, params, abort_at=1, sample_index=0)
    assert aborted.num_cached_tokens == 0
    assert reasons == ["abort", "length", "length"] and cut[0] == []
    assert cut[1:] == full[1:]
    assert core.scheduler.kv.all_blocks_free() and not core.has_unfinished()
