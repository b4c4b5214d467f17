"""The native 4-bit path: GGUF Q4_0/Q4_1 blocks read back exactly, and small steps through torch's int4 kernel
agree with the dense weights."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from plait.loading.gguf_file import Q4Blocks, load_q4_blocks
from plait.runner.packed_linear import can_pack
from plait.runner.q4_linear import Q4Linear, can_use_q4

spec = importlib.util.spec_from_file_location("gguf_fixtures", Path(__file__).parents[1] / "loading" /
                                              "test_gguf_file.py")
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)
Q = fixtures.Q

needs_q4 = pytest.mark.skipif(not can_use_q4(torch.bfloat16, torch.device("cpu")),
                              reason="no CPU int4 kernel in this torch")


def dense_from_blocks(b: Q4Blocks) -> np.ndarray:
    return (b.q.astype(np.float32) - 8) * np.repeat(b.scale, 32, 1) + np.repeat(b.zero, 32, 1)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_blocks_reproduce_the_dequantized_weights_exactly(tmp_path, qtype):
    path = tmp_path / "tiny.gguf"
    expected = fixtures.write_tiny_gguf(path, qtype=qtype)
    blocks = load_q4_blocks(path)
    matrices = {n for n, w in expected.items() if w.ndim == 2}
    assert set(blocks) == matrices  # q/k included: their rows are un-permuted like the dense weights
    for name, b in blocks.items():
        np.testing.assert_allclose(dense_from_blocks(b), expected[name], rtol=0, atol=1e-6)


def random_blocks(rows: int, cols: int, seed: int = 0) -> Q4Blocks:
    rng = np.random.default_rng(seed)
    return Q4Blocks(rng.integers(0, 16, (rows, cols)).astype(np.uint8),
                    rng.uniform(0.001, 0.02, (rows, cols // 32)).astype(np.float32),
                    rng.normal(0, 0.02, (rows, cols // 32)).astype(np.float32))


@needs_q4
def test_small_steps_use_the_4bit_kernel_large_steps_the_dense_path():
    blocks = random_blocks(96, 128)
    # Dense weights as the kernel sees them: bf16 scale and zero.
    scale = torch.from_numpy(blocks.scale).bfloat16().float().repeat_interleave(32, 1)
    zero = torch.from_numpy(blocks.zero).bfloat16().float().repeat_interleave(32, 1)
    weight = (torch.from_numpy(blocks.q.astype(np.float32)) - 8) * scale + zero
    dense = torch.nn.Linear(128, 96, bias=False).bfloat16()
    dense.weight.data = weight.bfloat16()
    layer = Q4Linear(dense, blocks, max_rows=4)
    x = torch.randn(3, 128).bfloat16()
    reference = x.float() @ weight.t()
    torch.testing.assert_close(layer(x).float(), reference, atol=0.05, rtol=0.02)
    big = torch.randn(16, 128).bfloat16()
    assert torch.equal(layer(big), dense(big))


@needs_q4
def test_engine_on_a_q4_gguf_matches_dense_weights(tmp_path):
    """bf16 engine over a Q4_1 GGUF: the first sampled token and its logprob (one forward from the prompt) agree
    between the 4-bit kernel and the dense weights. Later positions drift apart on this tiny random model, as any
    two bf16 roundings do; tests/golden bounds the drift on the real model."""
    from plait import LLM, SamplingParams

    if not can_pack(torch.bfloat16, torch.device("cpu")):
        pytest.skip("no native bf16 on this CPU")
    path = tmp_path / "tiny.gguf"
    fixtures.write_tiny_gguf(path, qtype=Q.Q4_1)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    native = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20)
    dense = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20, native_q4=False)
    assert any(isinstance(m, Q4Linear) for m in native.engine.runner.model.modules())
    a = native.generate(prompts, params, use_tqdm=False)
    b = dense.generate(prompts, params, use_tqdm=False)
    for x, y in zip(a, b):
        lx = [next(iter(e.values())).logprob for e in x.outputs[0].logprobs]
        ly = [next(iter(e.values())).logprob for e in y.outputs[0].logprobs]
        assert x.outputs[0].token_ids[0] == y.outputs[0].token_ids[0]
        assert lx[0] == pytest.approx(ly[0], abs=0.02)
