"""Tensor-level wrappers around the C kernels: check what the C code assumes, then pass pointers."""

from __future__ import annotations

import torch

from plait.runner.native import Kernels


def paged_decode_attention(kernels: Kernels, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, block_size: int,
                           scale: float) -> torch.Tensor:
    """One query token per sequence against its paged context.

    q: [B, H, D] (rows may be strided, heads and dims contiguous); k_cache/v_cache: [KV, slots, D] contiguous;
    block_tables: [B, max_blocks] int32; context_lens: [B] int32, K/V of the query token already written.
    Returns [B, H, D] in q's dtype.
    """
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[0]
    if q.dtype == torch.bfloat16:
        fn = kernels.paged_decode_bf16
    elif q.dtype == torch.float32:
        fn = kernels.paged_decode_f32
    else:
        raise TypeError(f"paged_decode_attention: unsupported dtype {q.dtype}")
    if q.stride(2) != 1 or q.stride(1) != dim:
        q = q.contiguous()
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not t.is_contiguous() or t.dtype != q.dtype or t.device.type != "cpu":
            raise ValueError(f"paged_decode_attention: {name} must be a contiguous CPU {q.dtype} tensor")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32:
        raise ValueError("paged_decode_attention: block_tables and context_lens must be int32")
    block_tables, context_lens = block_tables.contiguous(), context_lens.contiguous()
    out = torch.empty(batch, heads, dim, dtype=q.dtype)
    rc = fn(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0),
            block_tables.data_ptr(), block_tables.shape[1], context_lens.data_ptr(), batch, heads, kv_heads, dim,
            block_size, scale, out.data_ptr())
    if rc != 0:
        raise MemoryError("paged_decode_attention: a kernel thread could not allocate its scratch buffer")
    return out
