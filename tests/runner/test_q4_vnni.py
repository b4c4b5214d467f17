"""The AVX512-VNNI 4-bit kernel (native/q4_vnni.c): equal to its stated arithmetic (int8 activations per block of
32, the file's codes and fp16 scales), close to the dense weights, bit-identical rows at any step size, and wired
into the engine's 4-bit path, batch-invariant mode included."""

import numpy as np
import pytest
import torch

from plait.loading.gguf_file import Q4Blocks
from plait.runner.native import load_kernels
from plait.runner.q4_linear import ALL_ROWS, Q4Linear
from plait.runner.q4_vnni import pack_q4_vnni, q4_vnni_linear

kernels = load_kernels()
needs_vnni = pytest.mark.skipif(kernels is None or kernels.q4_vnni_linear_bf16 is None,
                                reason="no native kernels or no AVX512-VNNI on this CPU")


def random_blocks(rows: int, cols: int, seed: int = 0) -> Q4Blocks:
    """Q4_1-like blocks whose scales and minimums are fp16 values, as in a GGUF file."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.001, 0.02, (rows, cols // 32)).astype(np.float16).astype(np.float32)
    m = rng.normal(0, 0.05, (rows, cols // 32)).astype(np.float16).astype(np.float32)
    return Q4Blocks(rng.integers(0, 16, (rows, cols)).astype(np.uint8), d, m + 8 * d)


def emulate(x: torch.Tensor, b: Q4Blocks) -> torch.Tensor:
    """The kernel's arithmetic: activations rounded to int8 as it does (in fp32), then the rest in float64:
    sum_b d * dx * sum (q - 8) * xq + zero * sum x."""
    rows, cols = x.shape
    xf = x.float().reshape(rows, cols // 32, 32)
    amax = xf.abs().amax(-1, keepdim=True)
    xq = torch.round(xf * torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))).double()
    dx = (amax / 127).double()
    xb = xf.double()
    codes = torch.from_numpy(b.q.astype(np.float64) - 8).reshape(b.q.shape[0], cols // 32, 32)
    dots = torch.einsum("mbk,nbk->mnb", xq, codes)
    scale = torch.from_numpy(b.scale.astype(np.float64))
    zero = torch.from_numpy(b.zero.astype(np.float64))
    return (dots * dx[..., 0][:, None, :] * scale[None]).sum(-1) + xb.sum(-1) @ zero.T


def dense(b: Q4Blocks) -> torch.Tensor:
    return torch.from_numpy((b.q.astype(np.float32) - 8) * np.repeat(b.scale, 32, 1) + np.repeat(b.zero, 32, 1))


def run(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    out = q4_vnni_linear(kernels.q4_vnni_linear_bf16, x, packed, n)
    assert out is not None
    return out


@needs_vnni
def test_pack_layout_puts_two_inputs_per_byte_and_the_file_scales_as_fp16():
    b = random_blocks(32, 64)
    packed = pack_q4_vnni(b).numpy().reshape(2, 2, 320)  # tiles, blocks, bytes
    # tile 1, block 1, chunk 2, output 5, input 3: low nibble = input 4*2+3, high nibble = input 16+4*2+3
    byte = packed[1, 1, 64 * 2 + 4 * 5 + 3]
    assert byte & 15 == b.q[16 + 5, 32 + 11] and byte >> 4 == b.q[16 + 5, 32 + 27]
    scales = packed[1, 1, 256:288].view(np.float16)
    minimums = packed[1, 1, 288:320].view(np.float16)
    assert np.array_equal(scales.astype(np.float32), b.scale[16:32, 1])
    assert np.array_equal(minimums.astype(np.float32), (b.zero - 8 * b.scale)[16:32, 1])


def exactly_quantized(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Activations whose int8 rounding is exact (each block's amax is 127/16, every value a multiple of 1/16), so
    the kernel and the emulation cannot round a value differently at a tie."""
    codes = torch.randint(-126, 127, (rows, cols), generator=torch.Generator().manual_seed(seed)).float()
    codes[:, ::32] = 127
    return (codes / 16).to(torch.bfloat16)


@needs_vnni
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 40])
def test_kernel_computes_its_stated_arithmetic_and_stays_close_to_the_dense_weights(rows):
    b = random_blocks(96, 256, seed=rows)
    packed = pack_q4_vnni(b)
    x = exactly_quantized(rows, 256, seed=rows)
    # Only the final rounding to bf16 separates the kernel from the exact arithmetic (fp32 sums over 8 blocks).
    assert torch.allclose(run(x, packed, 96).double(), emulate(x, b), rtol=2 ** -8, atol=1e-4)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    got, exact = run(x, packed, 96).double(), x.double() @ dense(b).double().T
    assert ((got - exact).norm() / exact.norm()).item() < 0.02  # int8 activations: ~0.6% relative here


@needs_vnni
def test_every_row_is_bit_identical_alone_and_in_any_step():
    b = random_blocks(48, 192, seed=3)
    packed = pack_q4_vnni(b)
    x = torch.randn(70, 192, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    full = run(x, packed, 48)
    for m in list(range(1, 20)) + [33, 64, 70]:
        assert torch.equal(run(x[:m], packed, 48), full[:m]), m
        assert torch.equal(run(x[m - 1:m], packed, 48)[0], full[m - 1]), m


@needs_vnni
def test_kernel_refuses_shapes_it_does_not_tile_and_the_layer_falls_back_to_dense():
    assert kernels.q4_vnni_linear_bf16(0, 0, 0, 1, 24, 64) == -1  # outputs not a multiple of 16
    assert kernels.q4_vnni_linear_bf16(0, 0, 0, 1, 32, 48) == -1  # inputs not a multiple of 32
    with pytest.raises(ValueError, match="does not tile"):
        pack_q4_vnni(random_blocks(24, 64))


@needs_vnni
def test_q4_linear_with_the_kernel_serves_every_step_and_adds_the_bias():
    from plait.models.llama import Linear

    b = random_blocks(32, 64, seed=9)
    layer = Linear(64, 32, True, torch.bfloat16)
    layer.weight.data = dense(b).bfloat16()
    layer.bias.data = torch.randn(32).bfloat16()
    q4 = Q4Linear(layer, b, kernel=kernels.q4_vnni_linear_bf16)
    assert q4.max_rows == ALL_ROWS and q4.batch_invariant and q4.scales_zeros is None
    x = torch.randn(600, 64).bfloat16()
    with torch.inference_mode():
        out = q4(x)
    assert torch.equal(out, run(x, q4.packed, 32) + layer.bias)
    assert not Q4Linear(layer, b).batch_invariant  # torch's int4 kernel switches to dense above 8 rows


@needs_vnni
def test_engine_uses_the_kernel_by_default_and_under_batch_invariance(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    from plait import LLM, SamplingParams

    spec = spec_from_file_location("gguf_fixtures", Path(__file__).parents[1] / "loading" / "test_gguf_file.py")
    fixtures = module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    path = tmp_path / "tiny.gguf"
    fixtures.write_tiny_gguf(path, qtype=fixtures.Q.Q4_1)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    prompt = [5, 6, 7, 8, 9]
    outputs = {}
    for invariant in (False, True):
        llm = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20, batch_invariant=invariant)
        layers = [m for m in llm.engine.runner.model.modules() if isinstance(m, Q4Linear)]
        assert layers and all(m.batch_invariant for m in layers)
        alone = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
        batch = llm.generate([prompt] + [[10 + i, 11, 12] for i in range(6)], params, use_tqdm=False)
        assert batch[0].outputs[0].token_ids == alone
        outputs[invariant] = alone
        assert llm.engine.scheduler.kv.all_blocks_free()
    assert outputs[False] == outputs[True]


@needs_vnni
def test_dequantize_gives_back_the_loaders_dense_matrix():
    """q * d + m rounded to fp32 then bf16, as gguf_file.dequantize and the loader compute it: Q4_1 and Q4_0."""
    from plait.runner.q4_vnni import dequantize_q4_vnni

    for b in (random_blocks(48, 96, seed=3), Q4Blocks(random_blocks(32, 64, seed=4).q,
                                                      random_blocks(32, 64, seed=4).scale, np.zeros((32, 2), np.float32))):
        minimum = b.zero - 8 * b.scale  # the file's m (Q4_0: -8 d)
        want = (b.q.astype(np.float32).reshape(b.q.shape[0], -1, 32) * b.scale[..., None] + minimum[..., None])
        want = torch.from_numpy(want.reshape(b.q.shape)).to(torch.bfloat16)
        got = dequantize_q4_vnni(kernels.q4_vnni_dequantize_bf16, pack_q4_vnni(b), *b.q.shape)
        assert torch.equal(got, want)


@needs_vnni
def test_one_copy_of_each_weight_and_detach_rebuilds_it(tmp_path):
    """The VNNI path keeps no dense module where the blocks rebuild it bit for bit (a file's weights), rebuilds it
    on detach (a weight update's first step), and keeps it for blocks quantized from other weights."""
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    from plait import LLM
    from plait.models.llama import Linear
    from plait.runner.q4_linear import detach_q4
    from plait.runner.q4_quantize import quantize_q4

    spec = spec_from_file_location("gguf_fixtures", Path(__file__).parents[1] / "loading" / "test_gguf_file.py")
    fixtures = module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    path = tmp_path / "tiny.gguf"
    fixtures.write_tiny_gguf(path, qtype=fixtures.Q.Q4_1)
    dense = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20, native_q4=False, packed_weights=False)
    llm = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20, packed_weights=False)
    model = llm.engine.runner.model
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, Q4Linear)}
    assert wrapped and all(m.dense is None for m in wrapped.values())
    assert not any(isinstance(m, Linear) for m in model.modules() if m is not model.lm_head)
    reference = dict(dense.engine.runner.model.named_modules())
    assert detach_q4(model) == len(wrapped)
    for name in wrapped:
        restored = model.get_submodule(name)
        assert type(restored) is Linear and torch.equal(restored.weight, reference[name].weight)
    # Blocks quantized from the dense weight do not rebuild it: that wrapper keeps its dense module.
    some = model.get_submodule(next(iter(wrapped)))
    requantized = Q4Linear(some, quantize_q4(some.weight), kernel=kernels.q4_vnni_linear_bf16,
                           dequantize=kernels.q4_vnni_dequantize_bf16)
    assert not requantized.release_dense() and requantized.dense is some
