"""4-bit weights in the layout of the AVX512-VNNI kernel (native/q4_vnni.c), and the call into it.

The kernel multiplies a bf16 activation, quantized to int8 per block of 32 inside the call, by the file's own
Q4_0 / Q4_1 codes with integer dot products, reading the weights once per step whatever the step's row count.
Each row's arithmetic is the same alone or in any batch (see the C file), so this path is batch-invariant.
"""

from __future__ import annotations

import numpy as np
import torch

from plait.loading.gguf_file import Q4Blocks

TILE_N = 16  # outputs per tile: one int32 lane each


def pack_q4_vnni(blocks: Q4Blocks) -> torch.Tensor:
    """The kernel's byte stream for one [N, K] matrix: per tile of 16 outputs and block of 32 inputs, 256 bytes of
    nibbles (byte 4n + i of chunk c: input 4c + i low, 16 + 4c + i high, for output n), 16 fp16 scales d and 16
    fp16 minimums (value = q * d + minimum; Q4Blocks keeps zero = minimum + 8 d)."""
    rows, cols = blocks.q.shape
    if rows % TILE_N or cols % Q4Blocks.GROUP:
        raise ValueError(f"a {rows} x {cols} matrix does not tile into 16 outputs x 32 inputs")
    tiles, nb = rows // TILE_N, cols // Q4Blocks.GROUP
    q = blocks.q.astype(np.uint8).reshape(tiles, TILE_N, nb, 2, 4, 4)  # tile, n, block, half, chunk, i
    nibbles = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).transpose(0, 2, 3, 1, 4).reshape(tiles, nb, 256)

    def per_tile(values: np.ndarray) -> np.ndarray:  # [N, nb] float -> [tiles, nb, 32] bytes of 16 fp16
        half = values.astype(np.float16).reshape(tiles, TILE_N, nb).transpose(0, 2, 1)
        return np.ascontiguousarray(half).view(np.uint8)

    scale = blocks.scale.astype(np.float32)
    minimum = blocks.zero.astype(np.float32) - 8.0 * scale
    packed = np.concatenate([nibbles, per_tile(scale), per_tile(minimum)], axis=-1)
    return torch.from_numpy(np.ascontiguousarray(packed).reshape(-1))


def dequantize_q4_vnni(kernel, packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor | None:
    """The dense bf16 [out, in] matrix of packed weights (Kernels.q4_vnni_dequantize_bf16), or None if refused."""
    out = torch.empty(out_features, in_features, dtype=torch.bfloat16)
    status = kernel(packed.data_ptr(), out.data_ptr(), out_features, in_features)
    return out if status == 0 else None


def q4_vnni_linear(kernel, x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor | None:
    """x [M, K] bf16 -> [M, out_features] bf16, or None if the kernel refused (the caller falls back)."""
    return run_vnni_kernel(kernel, x, packed, out_features, torch.bfloat16)


def run_vnni_kernel(kernel, x: torch.Tensor, packed: torch.Tensor, out_features: int,
                    out_dtype: torch.dtype) -> torch.Tensor | None:
    """Call a VNNI kernel (q4_vnni.c, q8_vnni.c: x, packed weights, y, M, N, K); None if it refused."""
    x = x.contiguous()
    out = torch.empty(x.shape[0], out_features, dtype=out_dtype)
    if x.shape[0] == 0:
        return out
    status = kernel(x.data_ptr(), packed.data_ptr(), out.data_ptr(), x.shape[0], out_features, x.shape[1])
    return out if status == 0 else None
