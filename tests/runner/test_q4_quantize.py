"""Re-quantizing to the 4-bit path after a weight update: the quantizer matches llama.cpp's Q4_1 codes, and an
engine on a Q4_1 GGUF keeps its 4-bit modules after update_weights, holding the new weights' blocks, with the
same tokens as a fresh engine quantized from the same weights."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from plait.loading.gguf_file import load_q4_blocks
from plait.runner.q4_linear import Q4Linear, can_use_q4
from plait.runner.q4_quantize import quantize_q4

spec = importlib.util.spec_from_file_location("gguf_fixtures", Path(__file__).parents[1] / "loading" /
                                              "test_gguf_file.py")
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)
Q = fixtures.Q

needs_q4 = pytest.mark.skipif(not can_use_q4(torch.bfloat16, torch.device("cpu")),
                              reason="no CPU int4 kernel in this torch")


def same_blocks(a: Q4Linear, b: Q4Linear) -> bool:
    """The same kernel and the same packed weights (the VNNI stream has its scales inside)."""
    if (a.kernel is None) != (b.kernel is None) or not torch.equal(a.packed, b.packed):
        return False
    return a.scales_zeros is None or torch.equal(a.scales_zeros, b.scales_zeros)


def dequant(b) -> np.ndarray:
    return (b.q.astype(np.float32) - 8) * np.repeat(b.scale, 32, 1) + np.repeat(b.zero, 32, 1)


def test_requantizing_llama_cpp_q4_1_weights_gives_back_their_codes(tmp_path):
    path = tmp_path / "tiny.gguf"
    expected = fixtures.write_tiny_gguf(path, qtype=Q.Q4_1)  # dequantized as the loader reads them
    for name, blocks in load_q4_blocks(path).items():
        mine = quantize_q4(torch.from_numpy(expected[name]))
        assert np.array_equal(mine.q, blocks.q), name
        np.testing.assert_allclose(mine.scale, blocks.scale, rtol=1e-5)
        np.testing.assert_allclose(dequant(mine), expected[name], atol=1e-5)


def test_quantization_error_is_at_most_half_a_step_and_constant_groups_are_exact():
    w = torch.randn(48, 96)
    w[3, :32] = 0.25  # a constant group
    b = quantize_q4(w)
    step = np.repeat(b.scale, 32, 1)
    assert np.all(np.abs(dequant(b) - w.numpy()) <= step / 2 + 1e-6)
    assert np.all(dequant(b)[3, :32] == 0.25)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q4(torch.zeros(16, 40))


def q4_modules(llm):
    return {n: m for n, m in llm.engine.runner.model.named_modules() if isinstance(m, Q4Linear)}


def dense_weight(q4_module) -> torch.Tensor:
    """The dense weight behind a Q4Linear (prepacked for oneDNN where the CPU has bf16: unpacked exactly; rebuilt
    from the blocks where the VNNI path dropped it)."""
    dense = q4_module.dense_module()
    return dense.weight if hasattr(dense, "weight") else dense.unpack().weight


def fresh_requantized(path, names):
    """A fresh engine on the file's dense weights with its 4-bit path quantized from them (the reference)."""
    from plait import LLM
    from plait.runner.weight_transforms import Q4Weights, TransformContext, apply_transforms

    llm = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20, native_q4=False)
    q4 = Q4Weights(vnni=Q4Weights._kernels(TransformContext(torch.bfloat16, torch.device("cpu"),
                                                             native_kernels=llm.config.native_kernels)) is not None)
    q4.wrapped = names
    ctx = TransformContext(torch.bfloat16, torch.device("cpu"), native_kernels=llm.config.native_kernels,
                           requantize=True)
    assert apply_transforms(llm.engine.runner.model, [q4], ctx) == [q4]
    return llm


@needs_q4
def test_update_on_the_4bit_path_equals_a_fresh_engine_on_the_new_file_then_requantizes_a_partial_update(tmp_path):
    from plait import LLM, SamplingParams

    old, new = tmp_path / "w1.gguf", tmp_path / "w2.gguf"
    fixtures.write_tiny_gguf(old, qtype=Q.Q4_1, seed=0)
    fixtures.write_tiny_gguf(new, qtype=Q.Q4_1, seed=1)
    llm = LLM(str(old), dtype="bfloat16", kv_cache_memory=1 << 20)
    names = sorted(q4_modules(llm))
    assert names  # the 4-bit path is on (AVX2 is enough: torch's int4 kernel has a generic CPU path)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]  # few rows per step: the 4-bit kernel runs
    before = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    llm.update_weights(str(new), "v2")
    modules = q4_modules(llm)
    assert sorted(modules) == names  # the 4-bit path is still on, on the same modules
    reference = LLM(str(new), dtype="bfloat16", kv_cache_memory=1 << 20)  # a file update reads the file's blocks
    for name, ref in q4_modules(reference).items():
        assert same_blocks(modules[name], ref), name
    after = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert after == [o.outputs[0].token_ids for o in reference.generate(prompts, params, use_tqdm=False)]
    assert after != before

    # A trainer's partial state dict: only q_proj of layer 0. Its fused q/k/v is quantized again from the merged
    # dense weights; the other modules keep W2's blocks.
    other = fixtures.random_hf_weights(300, "llama", False, seed=5)
    q = torch.from_numpy(other["model.layers.0.self_attn.q_proj.weight"])
    kept = q4_modules(llm)
    llm.update_weights({"model.layers.0.self_attn.q_proj.weight": q}, "v3", partial=True)
    modules = q4_modules(llm)
    # Only the changed module is quantized again; the others keep their blocks (no whole-model re-quantization).
    assert [n for n in names if modules[n] is not kept[n]] == ["layers.0.qkv_proj"]
    ref_modules = q4_modules(reference)
    assert all(torch.equal(dense_weight(modules[n]), dense_weight(ref_modules[n])) for n in names if "0.qkv" not in n)
    qkv = modules["layers.0.qkv_proj"]
    dense = dense_weight(qkv)
    assert torch.equal(dense[:q.shape[0]], q.bfloat16())
    assert same_blocks(qkv, Q4Linear(qkv.dense, quantize_q4(dense), kernel=qkv.kernel))
    assert torch.equal(modules["layers.1.qkv_proj"].packed, q4_modules(reference)["layers.1.qkv_proj"].packed)
    assert llm.engine.scheduler.kv.all_blocks_free()


@needs_q4
def test_a_state_dict_update_on_the_4bit_path_equals_a_fresh_engine_quantized_from_the_same_weights(tmp_path):
    from plait import LLM, SamplingParams
    from plait.loading import load_model

    old, new = tmp_path / "w1.gguf", tmp_path / "w2.gguf"
    fixtures.write_tiny_gguf(old, qtype=Q.Q4_1, seed=0)
    fixtures.write_tiny_gguf(new, qtype=Q.Q4_1, seed=1)
    llm = LLM(str(old), dtype="bfloat16", kv_cache_memory=1 << 20)
    names = sorted(q4_modules(llm))
    llm.update_weights(dict(load_model(str(new), dtype=torch.bfloat16).weights), "v2")  # what a trainer holds
    reference = fresh_requantized(new, names)
    modules = q4_modules(llm)
    assert sorted(modules) == names
    for name, ref in q4_modules(reference).items():
        assert same_blocks(modules[name], ref), name
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    assert ([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
            == [o.outputs[0].token_ids for o in reference.generate(prompts, params, use_tqdm=False)])


@needs_q4
@pytest.mark.slow
def test_default_model_keeps_its_4bit_path_and_its_tokens_after_updating_with_its_own_weights():
    from plait import LLM, SamplingParams
    from plait.loading.sources import resolve_model

    llm = LLM(None, dtype="bfloat16")
    names = sorted(q4_modules(llm))
    assert len(names) == 120  # 30 layers x (qkv, o, gate_up, down)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    before = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    llm.update_weights(str(resolve_model(None)), "again")
    assert sorted(q4_modules(llm)) == names
    # one copy of each weight on the VNNI path, also after the update rebuilt and re-dropped the dense modules
    assert all(m.dense is None for m in q4_modules(llm).values() if m.kernel is not None)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == before
