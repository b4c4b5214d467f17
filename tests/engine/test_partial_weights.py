"""Partial and bucketed weight updates: a partial update equals a fresh engine on the merged weights, buckets
equal one call, and bad buckets are refused with the old weights still serving."""

import threading

import pytest
import torch

from plait import BackgroundLLM
from tests.engine.test_llm import prompts
from tests.engine.test_weights import GREEDY, fresh_on, ids, w2  # noqa: F401 - fixtures


def some_of(weights):
    """A trainer's partial update: one of the fused q/k/v, one of the fused gate/up, an unfused matrix, a norm."""
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight",
             "model.layers.1.self_attn.o_proj.weight", "model.norm.weight"]
    return {n: weights[n] for n in names}


def buckets_of(weights, count):
    names = sorted(weights)
    return [{n: weights[n] for n in names[i::count]} for i in range(count)]


def test_partial_update_equals_a_fresh_engine_on_the_merged_weights(make_engine, fresh_on, tiny_model, w2):
    llm = make_engine()
    batch = prompts(4, seed=11, lo=20, hi=40)
    before = ids(llm.generate(batch, GREEDY, use_tqdm=False))
    part = some_of(w2)
    info = llm.update_weights(part, "p1", partial=True)
    assert info.partial and info.final and info.num_tensors == 4
    merged = dict(tiny_model[1], **part)
    after = llm.generate(batch, GREEDY, use_tqdm=False)
    assert ids(after) == ids(fresh_on(merged).generate(batch, GREEDY, use_tqdm=False)) != before
    assert all(o.weight_version == "p1" for o in after)
    # Only q of layer 0's fused q/k/v changed: its k and v rows are W1's.
    cfg = tiny_model[0]
    qkv = llm.engine.runner.model.layers[0].qkv_proj.weight
    q = cfg.num_heads * cfg.head_dim
    assert torch.equal(qkv[:q], w2["model.layers.0.self_attn.q_proj.weight"])
    k = tiny_model[1]["model.layers.0.self_attn.k_proj.weight"]
    assert torch.equal(qkv[q:q + k.shape[0]], k)
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_partial_update_of_prepacked_weights_repacks_only_what_it_writes(make_engine, tokenizer, tiny_model, w2):
    from plait.config import EngineConfig
    from plait.engine.builder import build_engine
    from plait.engine.llm import LLM
    from plait.runner.packed_linear import PackedLinear

    llm = make_engine(dtype="bfloat16")
    model = llm.engine.runner.model
    before = {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    if not before:
        pytest.skip("no oneDNN bf16 prepacking on this machine")
    part = some_of(w2)
    llm.update_weights(part, "p1", partial=True)
    after = {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    assert after.keys() == before.keys()  # everything packed again
    # Reading a packed weight back is a GEMM: only the written modules were unpacked and packed again.
    assert sorted(n for n in after if after[n] is not before[n]) == [
        "layers.0.qkv_proj", "layers.1.gate_up_proj", "layers.1.o_proj"]
    config = dict(dtype="bfloat16", kv_cache_memory=4 << 20)
    fresh = LLM(_prebuilt=build_engine(EngineConfig(**config), tiny_model[0], dict(tiny_model[1], **part),
                                       tokenizer), **config)
    batch = prompts(4, seed=11, lo=20, hi=40)
    assert ids(llm.generate(batch, GREEDY, use_tqdm=False)) == ids(fresh.generate(batch, GREEDY, use_tqdm=False))
    assert all(torch.equal(after[n].unpack().weight, m.unpack().weight) for n, m in fresh_packed(fresh).items())
    assert llm.engine.scheduler.kv.all_blocks_free()


def fresh_packed(llm):
    from plait.runner.packed_linear import PackedLinear

    return {n: m for n, m in llm.engine.runner.model.named_modules() if isinstance(m, PackedLinear)}


def test_partial_update_refuses_unknown_names_and_shapes_and_keeps_serving(make_engine, w2):
    llm = make_engine()
    batch = prompts(2, seed=12)
    before = ids(llm.generate(batch, GREEDY, use_tqdm=False))
    q = w2["model.layers.0.self_attn.q_proj.weight"]
    cases = [({"model.layers.0.self_attn.q_proj.weight": q[:-1]}, "shape"),
             ({"model.layers.7.self_attn.q_proj.weight": q}, "does not have"),
             ({"model.norm.weight": w2["model.norm.weight"].to(torch.int64)}, "floating-point")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            llm.update_weights(bad, "bad", partial=True)
    with pytest.raises(ValueError, match="partial=True"):  # without partial=True a subset is a missing-name error
        llm.update_weights(some_of(w2), "bad")
    assert llm.weight_version is None and ids(llm.generate(batch, GREEDY, use_tqdm=False)) == before


def test_buckets_equal_one_call_and_nothing_changes_before_the_final_bucket(make_engine, w2):
    one_shot, bucketed = make_engine(), make_engine()
    batch = prompts(3, seed=13, lo=20, hi=40)
    before = ids(bucketed.generate(batch, GREEDY, use_tqdm=False))
    one_shot.update_weights(w2, "v2")
    first, second, last = buckets_of(w2, 3)
    staged = [bucketed.update_weights(b, "v2", final=False) for b in (first, second)]
    assert [s.final for s in staged] == [False, False] and staged[1].num_tensors == len(first) + len(second)
    assert bucketed.weight_version is None and ids(bucketed.generate(batch, GREEDY, use_tqdm=False)) == before
    info = bucketed.update_weights(last, "v2")
    assert info.final and info.num_tensors == len(w2) and not info.partial
    assert ids(bucketed.generate(batch, GREEDY, use_tqdm=False)) == ids(one_shot.generate(batch, GREEDY,
                                                                                          use_tqdm=False))
    assert bucketed.weight_version == "v2"


def test_bad_buckets_are_refused(make_engine, w2, tmp_path):
    llm = make_engine()
    batch = prompts(2, seed=14)
    before = ids(llm.generate(batch, GREEDY, use_tqdm=False))
    first, second = buckets_of(w2, 2)
    llm.update_weights(first, "v2", final=False)
    with pytest.raises(ValueError, match="shape"):  # checked at its bucket, not at the end; not staged
        llm.update_weights({"model.norm.weight": torch.zeros(3)}, "v2", final=False)
    with pytest.raises(ValueError, match="earlier bucket"):
        llm.update_weights({next(iter(first)): first[next(iter(first))]}, "v2", final=False)
    with pytest.raises(ValueError, match="path"):
        llm.update_weights(str(tmp_path), "v2", final=False)
    # The final bucket without the rest, and not partial: the whole update fails, the old weights stay.
    with pytest.raises(ValueError, match="missing"):
        llm.update_weights({}, "v2")
    assert llm.weight_version is None and ids(llm.generate(batch, GREEDY, use_tqdm=False)) == before
    # A bucket of another version starts afresh: the staged one is dropped.
    llm.update_weights(first, "v2", final=False)
    llm.update_weights(second, "v3", final=False)
    with pytest.raises(ValueError, match="missing"):
        llm.update_weights({}, "v3")  # only "second" is staged for v3


def test_background_buckets_from_several_threads_then_partial_continue(make_engine, fresh_on, tiny_model, w2):
    engine = make_engine(BackgroundLLM)
    batch = prompts(2, seed=15)
    buckets = buckets_of(w2, 4)
    threads = [threading.Thread(target=engine.update_weights, args=(b, "v2"), kwargs=dict(final=False))
               for b in buckets[:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    future = engine.update_weights(buckets[3], "v2", mode="continue", block=False)
    assert future.result(30).num_tensors == len(w2)
    outs = [engine.result(engine.submit(p, GREEDY), timeout=30) for p in batch]
    assert ids(outs) == ids(fresh_on(w2).generate(batch, GREEDY, use_tqdm=False))
    part = some_of(tiny_model[1])
    assert engine.update_weights(part, "back", partial=True).partial
    outs = [engine.result(engine.submit(p, GREEDY), timeout=30) for p in batch]
    assert ids(outs) == ids(fresh_on(dict(w2, **part)).generate(batch, GREEDY, use_tqdm=False))
    assert all(o.weight_version == "back" for o in outs)
