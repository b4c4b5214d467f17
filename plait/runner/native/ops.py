"""Tensor-level wrappers around the C kernels: check what the C code assumes, then pass pointers."""

from __future__ import annotations

import torch

from plait.runner.native import Kernels


def paged_attention(kernels: Kernels, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, rows: torch.Tensor, context_lens: torch.Tensor, block_size: int,
                    scale: float) -> torch.Tensor:
    """Causal attention of every token of a packed batch over its own sequence's paged context.

    q: [T, H, D] (rows may be strided; heads and dims contiguous); k_cache/v_cache: [KV, slots, D] contiguous,
    already holding this step's K/V; block_tables: [R, max_blocks] int32; rows: [T] int32, each token's row of
    block_tables; context_lens: [T] int32, each token's position + 1. Returns [T, H, D] in q's dtype.
    """
    tokens, heads, dim = q.shape
    kv_heads = k_cache.shape[0]
    if q.dtype == torch.bfloat16:
        fn = kernels.paged_attention_bf16
    elif q.dtype == torch.float32:
        fn = kernels.paged_attention_f32
    else:
        raise TypeError(f"paged_attention: unsupported dtype {q.dtype}")
    if heads % kv_heads:
        raise ValueError(f"paged_attention: {heads} query heads do not split into {kv_heads} kv heads")
    if q.stride(2) != 1 or q.stride(1) != dim:
        q = q.contiguous()
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not t.is_contiguous() or t.dtype != q.dtype or t.device.type != "cpu":
            raise ValueError(f"paged_attention: {name} must be a contiguous CPU {q.dtype} tensor")
    for name, t in (("block_tables", block_tables), ("rows", rows), ("context_lens", context_lens)):
        if t.dtype != torch.int32:
            raise ValueError(f"paged_attention: {name} must be int32")
    if rows.shape != (tokens,) or context_lens.shape != (tokens,):
        raise ValueError(f"paged_attention: rows and context_lens need one entry per token ({tokens})")
    block_tables, rows, context_lens = block_tables.contiguous(), rows.contiguous(), context_lens.contiguous()
    out = torch.empty(tokens, heads, dim, dtype=q.dtype)
    rc = fn(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0),
            block_tables.data_ptr(), block_tables.shape[1], rows.data_ptr(), context_lens.data_ptr(), tokens, heads,
            kv_heads, dim, block_size, scale, out.data_ptr())
    if rc != 0:
        raise MemoryError("paged_attention: a kernel thread could not allocate its scratch buffer")
    return out
