"""fp32 linear layers on the CPU through plait's few-rows kernel (native/small_gemm.c) for steps of a few tokens.

MKL's fp32 GEMM is memory-bound only for one row (a GEMV); at 2-16 rows it can cost 1.5-3x as much on CPUs without
AVX-512 (measured on a 2-core AVX2 EPYC, SmolLM2-135M's layer shapes, one thread: 82 / 154 / 168 / 220 ms for
M = 1 / 5 / 8 / 16 against the kernel's 53 / 84 / 107 / 200). A decode step of a few streams and a speculative
verification of k + 1 tokens are exactly those sizes. Larger steps keep F.linear, which wins from ~32 rows.

The kernel computes every row with the same instructions at any row count, so within its range a row's result
does not depend on its neighbours; it differs from MKL by summation order only (~3e-6 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plait.models.llama import Linear

# Largest step the kernel takes (measured crossover with MKL on the machine above: 16 rows about even, 32 slower).
MAX_ROWS = 16


class SmallBatchLinear(nn.Module):
    """A Linear whose forward runs the few-rows kernel for steps of up to MAX_ROWS rows."""

    def __init__(self, linear: Linear, kernel) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[0] > MAX_ROWS or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        x = x.contiguous()
        out = torch.empty(x.shape[0], self.weight.shape[0], dtype=torch.float32)
        bias = self.bias.data_ptr() if self.bias is not None else None
        if self.kernel(x.data_ptr(), self.weight.data_ptr(), bias, out.data_ptr(), x.shape[0], self.weight.shape[0],
                       self.weight.shape[1]) != 0:
            return F.linear(x, self.weight, self.bias)
        return out

    def unwrap(self) -> Linear:
        linear = Linear(self.weight.shape[1], self.weight.shape[0], self.bias is not None, self.weight.dtype)
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def kernel_usable(kernels) -> bool:
    """The kernel exists and this CPU runs it (it refuses without AVX2 + FMA)."""
    fn = getattr(kernels, "small_linear_f32", None)
    if fn is None:
        return False
    x, w, y = torch.zeros(1, 8), torch.zeros(1, 8), torch.empty(1, 1)
    return fn(x.data_ptr(), w.data_ptr(), None, y.data_ptr(), 1, 1, 8) == 0


def wrap_linears(model: nn.Module, kernels) -> int:
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear) and child.weight.dtype == torch.float32 and child.weight.shape[1] % 8 == 0:
                setattr(parent, name, SmallBatchLinear(child, kernels.small_linear_f32))
                swapped += 1
    return swapped


def unwrap_linears(model: nn.Module) -> int:
    restored = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SmallBatchLinear):
                setattr(parent, name, child.unwrap())
                restored += 1
    return restored
