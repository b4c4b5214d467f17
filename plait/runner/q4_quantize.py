"""Quantize dense weights to 4-bit blocks, so the 4-bit path survives a weight update.

At load time (and after an update from a GGUF file) the 4-bit path reads the file's own Q4_0 / Q4_1 blocks. After
`update_weights` with a state dict those blocks hold the old weights, so the new dense weights are quantized here the way llama.cpp quantizes Q4_1 (its reference
`quantize_row_q4_1`): per group of 32 inputs, d = (max - min) / 15, q = floor((w - min) / d + 0.5) clipped to
0..15, value = q * d + min. In the Q4Blocks form the kernel reads: scale = d, zero = min + 8 d. Requantizing the
file's own dequantized Q4_1 weights gives back the file's codes (tests/runner/test_q4_quantize.py). In a bf16
engine the dense weights are bf16-rounded before they are quantized, so a scale or zero can land one bf16 step
from the file's (re-quantizing the default model's own weights flipped a greedy token on an AVX-512 machine). The
reference for a state-dict update is a fresh engine quantized from the same dense weights, which it equals bit for
bit.
"""

from __future__ import annotations

import torch
from torch import nn

from plait.loading.gguf_file import Q4Blocks


def quantize_q4(weight: torch.Tensor) -> Q4Blocks:
    """Q4_1-style blocks of a [out, in] matrix (in a multiple of 32)."""
    rows, cols = weight.shape
    if cols % Q4Blocks.GROUP:
        raise ValueError(f"weight has {cols} input columns; 4-bit blocks need a multiple of {Q4Blocks.GROUP}")
    w = weight.detach().float().reshape(rows, cols // Q4Blocks.GROUP, Q4Blocks.GROUP)
    lo, hi = w.amin(-1), w.amax(-1)
    d = (hi - lo) / 15
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))  # a constant group: every code 0, value = min
    q = torch.floor((w - lo[..., None]) * inv[..., None] + 0.5).clamp_(0, 15).to(torch.uint8)
    return Q4Blocks(q.reshape(rows, cols).numpy(), d.numpy(), (lo + 8 * d).numpy())


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] weight of a plain or prepacked linear layer."""
    if hasattr(module, "weight"):
        return module.weight
    return module.unpack().weight  # PackedLinear: read back exactly (runner/packed_linear.py)
