"""Module surgery: RMSNorm, SiLU-and-multiply and RoPE run through plait's C kernels (fused, one pass per row).

The model code never knows; the swapped modules keep their weights and interfaces. Numerics: fp32 arithmetic with
one rounding at the end, where eager bf16 PyTorch rounds after each op (fp32 models: equal to float rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from plait.models.layers import RMSNorm, Rope, SiluAndMul
from plait.runner.native import Kernels
from plait.runner.native.ops import add_rms_norm, rope_, silu_mul


class NativeRMSNorm(nn.Module):
    def __init__(self, norm: RMSNorm, kernels: Kernels) -> None:
        super().__init__()
        self.weight, self.eps, self.kernels = norm.weight, norm.eps, kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_rms_norm(self.kernels, x, self.weight, self.eps)[0]

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(self.kernels, x, self.weight, self.eps, residual)


class NativeSiluAndMul(nn.Module):
    def __init__(self, kernels: Kernels) -> None:
        super().__init__()
        self.kernels = kernels

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        return silu_mul(self.kernels, gate_up)


class NativeRope(nn.Module):
    """Rotates in place: the layer hands it a view of its own fresh qkv projection."""

    def __init__(self, kernels: Kernels) -> None:
        super().__init__()
        self.kernels = kernels

    def forward(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        return rope_(self.kernels, x, cos, signed_sin)


def use_native_layers(model: nn.Module, kernels: Kernels) -> int:
    """Swap every RMSNorm, SiluAndMul and Rope of `model` for its kernel version; returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RMSNorm):
                setattr(parent, name, NativeRMSNorm(child, kernels))
            elif isinstance(child, SiluAndMul):
                setattr(parent, name, NativeSiluAndMul(kernels))
            elif isinstance(child, Rope):
                setattr(parent, name, NativeRope(kernels))
            else:
                continue
            swapped += 1
    return swapped
