"""update_weights: equals a fresh engine on the new weights, bad state dicts refused, versions in every mode."""

import time

import pytest
import torch

from plait import BackgroundLLM, SamplingParams
from plait.config import EngineConfig
from tests.engine.test_llm import prompts
from tests.helpers import random_weights

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture
def w2(tiny_model):
    cfg, _ = tiny_model
    return random_weights(cfg, seed=1)


@pytest.fixture
def fresh_on(tokenizer, tiny_model):
    """fresh_on(weights) -> an offline LLM built from scratch on those weights (the reference)."""
    from plait.engine.builder import build_engine
    from plait.engine.llm import LLM

    def make(weights):
        cfg, _ = tiny_model
        config = dict(dtype="float32", kv_cache_memory=4 << 20)
        return LLM(_prebuilt=build_engine(EngineConfig(**config), cfg, dict(weights), tokenizer), **config)

    return make


def ids(outs):
    return [o.outputs[0].token_ids for o in outs]


def test_llm_update_equals_fresh_engine_even_after_prefix_cache_held_old_blocks(make_engine, fresh_on, w2,
                                                                                 tiny_model):
    batch = prompts(4, seed=2, lo=40, hi=60)  # several full blocks each: the prefix cache keeps them
    llm = make_engine()
    before = llm.generate(batch, GREEDY, use_tqdm=False)
    assert all(o.weight_version is None for o in before)
    info = llm.update_weights(w2, "v2")
    assert info.version == "v2" and info.num_tensors == len(w2) and info.swap_seconds >= 0
    after = llm.generate(batch, GREEDY, use_tqdm=False)
    assert all(o.num_cached_tokens == 0 for o in after)  # nothing computed with W1 is served
    assert ids(after) == ids(fresh_on(w2).generate(batch, GREEDY, use_tqdm=False)) != ids(before)
    assert all(o.weight_version == "v2" and o.outputs[0].weight_versions == [(0, "v2")] for o in after)
    # And back: the trainer's tensors were copied, so changing them in place does not touch the engine.
    w2["model.norm.weight"].mul_(0)
    llm.update_weights(tiny_model[1], 3)
    assert ids(llm.generate(batch, GREEDY, use_tqdm=False)) == ids(before)
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_bad_state_dicts_are_refused_and_old_weights_stay(make_engine, w2):
    llm = make_engine()
    batch = prompts(2, seed=3)
    before = ids(llm.generate(batch, GREEDY, use_tqdm=False))
    missing = dict(w2)
    missing.pop("model.layers.0.self_attn.q_proj.weight")
    extra = dict(w2, **{"model.layers.9.mlp.up_proj.weight": torch.zeros(4, 4)})
    shape = dict(w2, **{"model.norm.weight": torch.zeros(3)})
    dtype = dict(w2, **{"model.norm.weight": w2["model.norm.weight"].to(torch.int32)})
    cases = [(missing, "missing tensor"), (extra, "does not have"), (shape, "shape"), (dtype, "floating-point"),
             ({"model.norm.weight": [1.0]}, "torch.Tensor"), (42, "state dict")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            llm.update_weights(bad, "bad")
    with pytest.raises(ValueError, match="mode"):
        llm.update_weights(w2, "v", mode="later")
    with pytest.raises(ValueError, match="version"):
        llm.update_weights(w2, 1.5)
    assert llm.weight_version is None
    assert ids(llm.generate(batch, GREEDY, use_tqdm=False)) == before


def _first_tokens(engine, rid, count=2, timeout=30):
    got = []
    deadline = time.monotonic() + timeout
    while sum(len(o.outputs[0].token_ids) for o in got) < count:
        assert time.monotonic() < deadline
        got += engine.poll(timeout=1)
    return got


def test_continue_mode_request_spans_the_update(make_engine, fresh_on, tiny_model, w2):
    engine = make_engine(BackgroundLLM)
    prompt = prompts(1, seed=4)[0]
    long = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    w1_tokens = ids(fresh_on(tiny_model[1]).generate([prompt], long, use_tqdm=False))[0]
    rid = engine.submit(prompt, long, stream=True)
    deltas = _first_tokens(engine, rid)
    info = engine.update_weights(w2, "v2", mode="continue")
    assert info.mode == "continue" and engine.weight_version == "v2"
    while not (deltas and deltas[-1].finished):
        deltas += engine.poll(timeout=1)
    tokens = sum((d.outputs[0].token_ids for d in deltas), [])
    segments = []
    offset = 0
    for d in deltas:  # delta segments are offsets into each delta: rebuild the request's segments
        for at, version in d.outputs[0].weight_versions:
            if not segments or segments[-1][1] != version:
                segments.append((offset + at, version))
        offset += len(d.outputs[0].token_ids)
    assert len(tokens) == 60 and deltas[-1].weight_version == "v2"
    assert segments[0] == (0, None) and segments[1][1] == "v2" and len(segments) == 2
    switch = segments[1][0]
    assert 2 <= switch < 60 and tokens[:switch] == w1_tokens[:switch]  # KV kept, old tokens untouched
    wait = time.monotonic() + 10
    while not engine.async_llm.engine.scheduler.kv.all_blocks_free():
        assert time.monotonic() < wait
        time.sleep(0.01)


def test_drain_finishes_old_requests_on_old_weights_and_holds_new_ones(make_engine, fresh_on, tiny_model, w2):
    engine = make_engine(BackgroundLLM)
    old_prompt, new_prompt = prompts(2, seed=5)
    long = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    w1_expected = ids(fresh_on(tiny_model[1]).generate([old_prompt], long, use_tqdm=False))
    w2_expected = ids(fresh_on(w2).generate([new_prompt], GREEDY, use_tqdm=False))
    old = engine.submit(old_prompt, long)
    _ = engine.result(engine.submit(prompts(1, seed=6)[0], SamplingParams(max_tokens=1)), timeout=30)
    future = engine.update_weights(w2, "v2", mode="drain", block=False)
    new = engine.submit(new_prompt, GREEDY)  # held back until the swap
    held_abort = engine.submit(new_prompt, GREEDY)
    engine.abort(held_abort)  # aborting a held request still ends it, once
    old_out = engine.result(old, timeout=60)
    assert future.result(60).mode == "drain"
    new_out = engine.result(new, timeout=60)
    assert ids([old_out]) == w1_expected and old_out.weight_version is None
    assert old_out.outputs[0].weight_versions == [(0, None)]
    assert ids([new_out]) == w2_expected and new_out.weight_version == "v2"
    assert engine.result(held_abort, timeout=30).outputs[0].finish_reason == "abort"


def test_abort_mode_ends_in_flight_requests(make_engine, fresh_on, w2):
    engine = make_engine(BackgroundLLM)
    rid = engine.submit(prompts(1, seed=7)[0], SamplingParams(max_tokens=400, temperature=0, ignore_eos=True),
                        stream=True)
    _first_tokens(engine, rid, count=1)
    info = engine.update_weights(w2, 7, mode="abort")
    assert info.aborted == 1
    out = engine.result(rid, timeout=30)
    assert out.outputs[0].finish_reason == "abort" and out.weight_version is None
    batch = prompts(1, seed=8)
    again = engine.result(engine.submit(batch[0], GREEDY), timeout=30)
    assert ids([again]) == ids(fresh_on(w2).generate(batch, GREEDY, use_tqdm=False)) and again.weight_version == 7


def test_shutdown_fails_a_drain_update_still_waiting(make_engine, w2):
    from plait.engine.async_llm import EngineDeadError

    engine = make_engine(BackgroundLLM)
    rid = engine.submit(prompts(1, seed=9)[0], SamplingParams(max_tokens=400, temperature=0, ignore_eos=True),
                        stream=True)
    _first_tokens(engine, rid, count=1)
    future = engine.update_weights(w2, "v2", mode="drain", block=False)
    engine.shutdown()
    with pytest.raises(EngineDeadError):
        future.result(30)
    assert engine.weight_version is None
