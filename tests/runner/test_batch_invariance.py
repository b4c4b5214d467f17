"""Op by op: one row computed alone has the same bits as the same row inside a step of M rows (design rule 9).

These are the facts `batch_invariant=True` stands on (runner/invariance.py); a torch or compiler upgrade that
breaks one shows up here first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plait.models.layers import RMSNorm
from plait.models.llama import Linear
from plait.params import SamplingParams
from plait.runner import native
from plait.runner.native.ops import add_rms_norm, paged_attention, rope_, silu_mul
from plait.runner.packed_linear import PackedLinear, can_pack
from plait.runner.q4_linear import Q4Linear, can_use_q4
from plait.sampling import Sampler, SamplingBatch

kernels = native.load_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason=f"C kernels unavailable: {native.unavailable_reason()}")
ROW_COUNTS = (1, 2, 3, 4, 8, 9, 17, 64, 100)
# SmolLM2-135M's matrix shapes (qkv, o, gate_up, down) and a cut of its lm_head (out, in).
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (4096, 576)]


def assert_rows_invariant(fn, x: torch.Tensor, rows=(0, 3)) -> None:
    """fn's output for each of `rows` alone == that row inside the first M rows of x, bitwise, for every M."""
    with torch.inference_mode():
        alone = {r: fn(x[r: r + 1])[0] for r in rows}
        for m in ROW_COUNTS:
            out = fn(x[:m])
            for r in rows:
                if r < m:
                    assert torch.equal(out[r], alone[r]), f"row {r} inside {m} rows differs from row {r} alone"


def linear(out_f: int, in_f: int, dtype: torch.dtype, seed: int = 0) -> Linear:
    g = torch.Generator().manual_seed(seed)
    layer = Linear(in_f, out_f, dtype=dtype)
    layer.weight.data = (torch.randn(out_f, in_f, generator=g) * 0.05).to(dtype)
    return layer


def inputs(rows: int, dim: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.skipif(not can_pack(torch.float32, torch.device("cpu"), batch_invariant=True), reason="no oneDNN")
@pytest.mark.parametrize("out_f,in_f", SHAPES)
def test_onednn_packed_fp32_linear_is_row_invariant(out_f, in_f):
    assert_rows_invariant(PackedLinear(linear(out_f, in_f, torch.float32), batch_invariant=True),
                          inputs(100, in_f, torch.float32))


@pytest.mark.parametrize("out_f,in_f", SHAPES[:2])
def test_bf16_linear_is_row_invariant(out_f, in_f):
    layer = linear(out_f, in_f, torch.bfloat16)
    x = inputs(100, in_f, torch.bfloat16)
    assert_rows_invariant(layer, x)
    if can_pack(torch.bfloat16, torch.device("cpu")):
        assert_rows_invariant(PackedLinear(layer, batch_invariant=True), x)


@pytest.mark.skipif(not can_pack(torch.bfloat16, torch.device("cpu")), reason="no oneDNN bf16")
def test_packed_linear_for_batch_invariance_gives_a_lone_row_the_many_row_bits():
    """With AVX-512, oneDNN's single-row kernel differs in the last bit from its many-row one on some rows (K = 1536:
    ~10% of random rows in bf16); packed for batch invariance, every row alone == the same row among 200."""
    for dtype in (torch.bfloat16, torch.float32):
        layer = PackedLinear(linear(576, 1536, dtype), batch_invariant=True)
        x = inputs(200, 1536, dtype)
        with torch.inference_mode():
            together = layer(x)
            assert all(torch.equal(layer(x[r: r + 1])[0], together[r]) for r in range(200))
            assert layer(x[:1].view(1, 1, 1536)).shape == (1, 1, 576)


def test_mkl_fp32_linear_is_not_row_invariant_which_is_why_fp32_is_packed():
    """Documents the measured fact behind packing fp32 in batch-invariant mode; if MKL ever becomes invariant
    this fails and the note in runner/packed_linear.py can go."""
    layer = linear(960, 576, torch.float32)
    x = inputs(16, 576, torch.float32)
    with torch.inference_mode():
        alone = layer(x[:1])[0]
        assert any(not torch.equal(layer(x[:m])[0], alone) for m in (2, 4, 8, 16))


@pytest.mark.skipif(not can_use_q4(torch.bfloat16, torch.device("cpu")), reason="no CPU int4 kernel")
def test_int4_kernel_is_row_invariant_but_the_q4_path_switches_weights_at_max_rows():
    from plait.loading.gguf_file import Q4Blocks

    rng = np.random.default_rng(0)
    blocks = Q4Blocks(rng.integers(0, 16, (96, 128)).astype(np.uint8),
                      rng.uniform(0.001, 0.02, (96, 4)).astype(np.float32),
                      rng.normal(0, 0.02, (96, 4)).astype(np.float32))
    x = inputs(100, 128, torch.bfloat16)
    dense = linear(96, 128, torch.bfloat16)
    assert_rows_invariant(Q4Linear(dense, blocks, max_rows=10**9), x)  # the kernel alone: invariant
    switching = Q4Linear(dense, blocks)  # the default: 4-bit up to 8 rows, dense above
    with torch.inference_mode():
        assert not torch.equal(switching(x[:9])[0], switching(x[:1])[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_rms_norm_is_row_invariant(dtype):
    norm = RMSNorm(576, 1e-5, dtype)
    norm.weight.data = (1 + 0.1 * inputs(1, 576, torch.float32, seed=5)[0]).to(dtype)
    x, residual = inputs(100, 576, dtype), inputs(100, 576, dtype, seed=2)
    assert_rows_invariant(norm, x)
    assert_rows_invariant(lambda t: torch.cat(norm.add_and_norm(t[:, :576], t[:, 576:]), -1),
                          torch.cat([x, residual], -1))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_elementwise_kernels_are_row_invariant(dtype):
    weight = (1 + 0.1 * inputs(1, 576, torch.float32, seed=5)[0]).to(dtype)
    x, residual = inputs(100, 576, dtype), inputs(100, 576, dtype, seed=2)
    assert_rows_invariant(lambda t: torch.cat(add_rms_norm(kernels, t[:, :576], weight, 1e-5, t[:, 576:]), -1),
                          torch.cat([x, residual], -1))
    assert_rows_invariant(lambda t: silu_mul(kernels, t), inputs(100, 2 * 1536, dtype))
    # Each row carries its qkv (15 heads of 64) and its own cos / sin tables; rope_ rotates a fresh copy in place.
    rows = torch.cat([inputs(100, 15 * 64, dtype), inputs(100, 64, dtype, seed=3), inputs(100, 64, dtype, seed=4)], -1)

    def rope(t: torch.Tensor) -> torch.Tensor:
        m = t.shape[0]
        return rope_(kernels, t[:, :960].clone().view(m, 15, 64), t[:, 960:1024].reshape(m, 1, 64).contiguous(),
                     t[:, 1024:].reshape(m, 1, 64).contiguous())

    assert_rows_invariant(rope, rows)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_kernel_gives_a_token_the_same_bits_alone_and_in_any_step(dtype):
    """A step of 5 decodes, a fresh 9-token prompt and a 6-token chunk after 20 cached tokens, then each token
    again alone (over the same cache): decodes, prompt tokens and continued chunks all match bitwise."""
    from tests.runner.test_native_attention import random_case

    for heads, kv_heads, dim in ((9, 3, 64), (4, 4, 128)):
        case = random_case(heads, kv_heads, dim, 16, dtype, seed=0)
        full = paged_attention(kernels, **case)
        for t in range(case["q"].shape[0]):
            one = dict(case, q=case["q"][t: t + 1], k=case["k"][t: t + 1], v=case["v"][t: t + 1],
                       slot_mapping=case["slot_mapping"][t: t + 1], rows=case["rows"][t: t + 1],
                       context_lens=case["context_lens"][t: t + 1])
            assert torch.equal(paged_attention(kernels, **one)[0], full[t]), f"token {t}"


def test_embedding_and_logits_cast_are_row_invariant():
    table = inputs(1000, 64, torch.bfloat16)
    ids = torch.randint(0, 1000, (100,), generator=torch.Generator().manual_seed(0))
    assert_rows_invariant(lambda i: F.embedding(i, table).float(), ids)


MIXED = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, seed=1),
         SamplingParams(temperature=1.0, top_k=50, seed=2), SamplingParams(temperature=0.7, top_p=0.9, seed=3),
         SamplingParams(temperature=1.2, min_p=0.05, seed=4, logprobs=3),
         SamplingParams(temperature=0.9, top_p=0.5, top_k=2000, seed=5, repetition_penalty=1.2,
                        frequency_penalty=0.3, logprobs=1),
         SamplingParams(temperature=1.0, top_p=0.999, seed=6), SamplingParams(temperature=1.0)]


@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16])
def test_seeded_and_greedy_sampling_is_row_invariant(logits_dtype):
    """Each seeded or greedy row alone == the same row inside a step of mixed rows: token and logprobs."""
    vocab, n = 49152, 24
    logits = (inputs(n, vocab, torch.float32, seed=7) * 3).to(logits_dtype).float()
    params = [MIXED[i % len(MIXED)] for i in range(n)]
    history = [[(i * 7 + j) % vocab for j in range(i % 5)] for i in range(n)]

    def run(rows: list[int]):
        return Sampler()(logits[rows], SamplingBatch(
            params=[params[i] for i in rows],
            generators=[None if params[i].seed is None else torch.Generator().manual_seed(params[i].seed)
                        for i in rows],
            output_token_ids=[history[i] for i in rows], prompt_token_ids=[[1, 2, 3]] * len(rows),
            eos_token_ids=[2]))

    together = run(list(range(n)))
    for i in range(n):
        if params[i].seed is None and params[i].temperature > 0:
            continue  # unseeded sampling draws from the global generator: reproducible by nobody
        alone = run([i])
        assert alone.token_ids[0] == together.token_ids[i], f"row {i}"
        assert alone.logprobs[0] == together.logprobs[i], f"row {i}"
