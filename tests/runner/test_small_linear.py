"""The few-rows fp32 kernel (native/small_gemm.c): equal to F.linear within summation-order rounding, every row
bitwise the same at any row count up to its limit, reversible as a weight transform, and used end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plait.models.llama import Linear
from plait.runner.native import load_kernels
from plait.runner.small_linear import MAX_ROWS, SmallBatchLinear, kernel_usable, unwrap_linears, wrap_linears
from plait.runner.weight_transforms import SmallBatchWeights, TransformContext

kernels = load_kernels()
needs_kernel = pytest.mark.skipif(kernels is None or not kernel_usable(kernels), reason="no AVX2+FMA C kernel")


def linear(n_out: int, n_in: int, bias: bool, seed: int = 0) -> Linear:
    g = torch.Generator().manual_seed(seed)
    layer = Linear(n_in, n_out, bias)
    layer.weight.data = torch.randn(n_out, n_in, generator=g) * 0.05
    if bias:
        layer.bias.data = torch.randn(n_out, generator=g)
    return layer


@needs_kernel
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear_and_every_row_is_batch_invariant(bias):
    plain = linear(200, 576, bias)
    fast = SmallBatchLinear(plain, kernels.small_linear_f32)
    x = torch.randn(MAX_ROWS + 3, 576)
    for rows in (1, 2, 5, 8, 9, MAX_ROWS):
        got = fast(x[:rows])
        torch.testing.assert_close(got, F.linear(x[:rows], plain.weight, plain.bias), rtol=1e-5, atol=1e-5)
        for i in range(rows):  # row i alone == row i among `rows`, bit for bit
            assert torch.equal(fast(x[i: i + 1])[0], got[i])
    torch.testing.assert_close(fast(x), F.linear(x, plain.weight, plain.bias))  # above MAX_ROWS: F.linear


@needs_kernel
def test_transform_applies_only_where_it_should_and_reverts():
    assert SmallBatchWeights().applies(TransformContext(torch.float32, torch.device("cpu"), native_kernels=True))
    assert not SmallBatchWeights().applies(TransformContext(torch.float32, torch.device("cpu")))
    assert not SmallBatchWeights().applies(TransformContext(torch.float32, torch.device("cpu"), batch_invariant=True,
                                                            native_kernels=True))
    assert not SmallBatchWeights().applies(TransformContext(torch.bfloat16, torch.device("cpu"), native_kernels=True))
    model = torch.nn.Sequential(linear(16, 64, False), linear(8, 16, True))
    weights = [m.weight for m in model]
    assert wrap_linears(model, kernels) == 2
    assert all(isinstance(m, SmallBatchLinear) for m in model)
    assert unwrap_linears(model) == 2
    assert all(type(m) is Linear for m in model) and [m.weight for m in model] == weights
