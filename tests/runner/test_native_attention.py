"""plait's C decode-attention kernel against plain PyTorch attention, and the engine with it on and off."""

from __future__ import annotations

import random

import pytest
import torch

from plait import SamplingParams
from plait.runner import native
from plait.runner.native.ops import add_rms_norm, paged_attention, rope_, silu_mul

kernels = native.load_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason=f"C kernels unavailable: {native.unavailable_reason()}")


def reference(q, k_cache, v_cache, tables, rows, lengths, block_size, scale):
    """Plain fp64 attention of each token over the first `lengths[t]` tokens of its row, gathered slot by slot."""
    tokens, heads, dim = q.shape
    group = heads // k_cache.shape[0]
    out = torch.empty(tokens, heads, dim, dtype=torch.float64)
    for t in range(tokens):
        table, n = tables[int(rows[t])], int(lengths[t])
        slots = torch.tensor([int(table[i // block_size]) * block_size + i % block_size for i in range(n)])
        keys = k_cache[:, slots].double().repeat_interleave(group, 0)  # [H, n, D]
        values = v_cache[:, slots].double().repeat_interleave(group, 0)
        probs = torch.softmax(torch.einsum("hd,hnd->hn", q[t].double() * scale, keys), -1)
        out[t] = torch.einsum("hn,hnd->hd", probs, values)
    return out


def random_case(heads, kv_heads, dim, block_size, dtype, seed, max_len=70):
    """A packed batch as a step builds it: decodes of 5 sequences (one with a context of just itself), then a
    fresh 9-token prompt and a 6-token chunk continuing 20 cached tokens. Returns the kernel's arguments."""
    g = torch.Generator().manual_seed(seed)
    width = -(-max_len // block_size)
    num_blocks = 7 * width + 3
    cache = torch.randn(2, kv_heads, num_blocks * block_size, dim, generator=g).to(dtype)
    decode_lens = torch.randint(1, max_len + 1, (5,), generator=g).tolist()
    decode_lens[0] = 1
    rows = [0, 1, 2, 3, 4] + [5] * 9 + [6] * 6
    lengths = decode_lens + list(range(1, 10)) + list(range(21, 27))
    tables = torch.randperm(num_blocks, generator=g)[: 7 * width].view(7, width).to(torch.int32)  # disjoint
    slots = [int(tables[r, (n - 1) // block_size]) * block_size + (n - 1) % block_size for r, n in zip(rows, lengths)]
    # q, k, v as the model produces them: slices of a wider fused tensor, rows strided.
    fused = torch.randn(len(rows), heads + 2 * kv_heads, dim, generator=g).to(dtype)
    q, k, v = fused[:, :heads], fused[:, heads: heads + kv_heads], fused[:, heads + kv_heads:]
    return dict(q=q, k=k, v=v, k_cache=cache[0], v_cache=cache[1], slot_mapping=torch.tensor(slots),
                block_tables=tables, rows=torch.tensor(rows, dtype=torch.int32),
                context_lens=torch.tensor(lengths, dtype=torch.int32), block_size=block_size, scale=dim ** -0.5)


@needs_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (10, 2, 64), (4, 4, 128), (12, 4, 128), (6, 2, 24)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_kernel_writes_new_kv_and_matches_plain_attention(heads, kv_heads, dim, dtype, tol):
    for seed, block_size in ((0, 16), (1, 5)):
        case = random_case(heads, kv_heads, dim, block_size, dtype, seed)
        expected_k, expected_v = case["k_cache"].clone(), case["v_cache"].clone()
        expected_k[:, case["slot_mapping"]] = case["k"].transpose(0, 1)
        expected_v[:, case["slot_mapping"]] = case["v"].transpose(0, 1)
        want = reference(case["q"], expected_k, expected_v, case["block_tables"], case["rows"],
                         case["context_lens"], block_size, case["scale"])
        out = paged_attention(kernels, **case)
        assert torch.equal(case["k_cache"], expected_k) and torch.equal(case["v_cache"], expected_v)
        assert out.dtype == dtype and out.shape == case["q"].shape
        torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)


@needs_kernels
def test_kernel_refuses_what_it_cannot_read():
    case = random_case(4, 2, 16, 4, torch.float32, 0)
    with pytest.raises(ValueError, match="block_tables must be torch.int32"):
        paged_attention(kernels, **{**case, "block_tables": case["block_tables"].long()})
    with pytest.raises(ValueError, match="k_cache"):
        paged_attention(kernels, **{**case, "k_cache": case["k_cache"].to(torch.bfloat16)})
    with pytest.raises(ValueError, match="one entry per token"):
        paged_attention(kernels, **{**case, "rows": case["rows"][:-1]})
    with pytest.raises(TypeError, match="dtype"):
        paged_attention(kernels, **{**case, **{name: case[name].half() for name in ("q", "k", "v", "k_cache",
                                                                                   "v_cache")}})


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_add_rms_norm_and_silu_mul_match_eager_pytorch(dtype, tol):
    g = torch.Generator().manual_seed(0)
    x, residual = (torch.randn(7, 3, 40, generator=g).to(dtype) for _ in range(2))
    weight = (1 + 0.1 * torch.randn(40, generator=g)).to(dtype)
    normed, total = add_rms_norm(kernels, x, weight, 1e-5)
    assert total is x or torch.equal(total, x)
    want = torch.rms_norm(x.float(), (40,), weight.float(), 1e-5)
    torch.testing.assert_close(normed.float(), want, atol=tol, rtol=tol)
    normed, total = add_rms_norm(kernels, x, weight, 1e-5, residual)
    assert torch.equal(total, x + residual)  # the sum is rounded like eager PyTorch's add
    torch.testing.assert_close(normed.float(), torch.rms_norm(total.float(), (40,), weight.float(), 1e-5),
                               atol=tol, rtol=tol)
    gate_up = torch.randn(5, 2 * 24, generator=g).to(dtype)
    gate, up = gate_up.float().chunk(2, -1)
    torch.testing.assert_close(silu_mul(kernels, gate_up).float(), torch.nn.functional.silu(gate) * up,
                               atol=tol, rtol=tol)


@needs_kernels
def test_engine_greedy_outputs_equal_with_and_without_the_kernel(make_engine):
    rng = random.Random(3)
    batch = [[rng.randrange(3, 49152) for _ in range(rng.randint(2, 50))] for _ in range(12)]
    shared = [rng.randrange(3, 49152) for _ in range(40)]  # prefix-cache hits: prompts continuing cached blocks
    batch += [shared + [rng.randrange(3, 49152) for _ in range(n)] for n in (1, 9, 30)]
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, logprobs=2)
    with_kernel = make_engine(max_num_batched_tokens=48)
    without = make_engine(max_num_batched_tokens=48, native_kernels=False)
    assert with_kernel.engine.runner.kernels is not None and without.engine.runner.kernels is None
    a = with_kernel.generate(batch, params, use_tqdm=False)
    b = without.generate(batch, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]
    for x, y in zip(a, b):
        for pa, pb in zip(x.outputs[0].logprobs, y.outputs[0].logprobs):
            assert pa.keys() == pb.keys()
            for token in pa:
                assert abs(pa[token].logprob - pb[token].logprob) < 1e-4
    for llm in (with_kernel, without):
        assert llm.engine.scheduler.kv.all_blocks_free()


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("PLAIT_NATIVE_KERNELS", "0")
    assert not native.enabled()
    monkeypatch.setenv("PLAIT_NATIVE_KERNELS", "1")
    assert native.enabled()


@needs_kernels
def test_build_is_cached_and_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAIT_CACHE", str(tmp_path))
    compiler = native._compiler()
    first = native.build(compiler)
    assert first.is_relative_to(tmp_path) and first.exists()
    mtime = first.stat().st_mtime_ns
    assert native.build(compiler) == first and first.stat().st_mtime_ns == mtime  # not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind


@needs_kernels
def test_loading_the_kernels_keeps_subnormals():
    """-ffast-math would link crtfastmath.o, which sets flush-to-zero for the whole process when loaded."""
    import numpy as np

    tiny = np.float32(1e-40)  # subnormal in fp32
    assert tiny != 0 and tiny * np.float32(1.0) != 0


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rope_in_place_matches_apply_rope(dtype, tol):
    from plait.models.layers import RotaryEmbedding, apply_rope

    rotary = RotaryEmbedding(16, 64, 10000.0, None)
    positions = torch.tensor([0, 5, 6, 63])
    cos, sin = rotary.tables(positions, dtype)
    fused = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    x = fused[:, :5]  # q and k heads of a fused projection: rows strided
    want = apply_rope(x.float(), cos.float(), sin.float())
    untouched = fused[:, 5:].clone()
    assert rope_(kernels, x, cos, sin) is x
    torch.testing.assert_close(x.float(), want, atol=tol, rtol=tol)
    assert torch.equal(fused[:, 5:], untouched)  # the rest of the row (v) is left alone


def test_without_a_compiler_the_kernels_are_unavailable_with_a_reason(monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    kernels_, reason = native._load.__wrapped__()
    assert kernels_ is None and "no C compiler" in reason


@needs_kernels
def test_a_failed_build_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAIT_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "COMPILE_FLAGS", native.COMPILE_FLAGS + ("-fno-such-flag-plait",))
    kernels_, reason = native._load.__wrapped__()
    assert kernels_ is None and "kernel build or load failed" in reason and "-fno-such-flag-plait" in reason
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.o"))  # nothing half-built left behind
