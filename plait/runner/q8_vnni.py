"""Q8_0 weights (a GGUF's LM head) in the layout of the AVX512-VNNI kernel (native/q8_vnni.c), and the call into it.

The kernel quantizes each bf16 activation row to int8 per block of 32 and multiplies it by the file's int8 values
with integer dot products, scaled per block by the file's fp16 scales: llama.cpp's Q8_0 x Q8_0 arithmetic, with
fp32 logits out. Each row's arithmetic is the same alone or in any batch.
"""

from __future__ import annotations

import numpy as np
import torch

from plait.runner.q4_vnni import run_vnni_kernel

TILE_N = 16  # outputs per tile: one int32 lane each
BLOCK = 32  # Q8_0's block: 32 int8 values and one fp16 scale


def pack_q8_vnni(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The kernel's byte stream for one [N, K] matrix of int8 `values` with fp32 `scales` [N, K / 32] (fp16 values,
    as a GGUF stores them): per tile of 16 outputs and block of 32 inputs, 8 chunks of 64 bytes (byte 4n + i of
    chunk c: output n's input 4c + i, plus 128) and 16 fp16 scales."""
    rows, cols = values.shape
    if rows % TILE_N or cols % BLOCK:
        raise ValueError(f"a {rows} x {cols} matrix does not tile into 16 outputs x 32 inputs")
    half = scales.to(torch.float16)
    if not torch.equal(half.float(), scales.float()):
        raise ValueError("Q8_0 scales must be fp16 values")
    tiles, nb = rows // TILE_N, cols // BLOCK
    shifted = (values.numpy().astype(np.int16) + 128).astype(np.uint8)
    codes = shifted.reshape(tiles, TILE_N, nb, 8, 4).transpose(0, 2, 3, 1, 4).reshape(tiles, nb, 512)
    d = half.numpy().reshape(tiles, TILE_N, nb).transpose(0, 2, 1)
    d = np.ascontiguousarray(d).view(np.uint8).reshape(tiles, nb, 32)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate([codes, d], axis=-1)).reshape(-1))


def q8_vnni_linear(kernel, x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor | None:
    """x [M, K] bf16 -> [M, out_features] fp32, or None if the kernel refused (the caller falls back)."""
    return run_vnni_kernel(kernel, x, packed, out_features, torch.float32)
