"""Tensor-level wrapper of shared_prefix.c: the step's groups packed once, then one call per layer."""

from __future__ import annotations

import ctypes

import torch

from plait.runner.native import Kernels, PrefixArgs

# Members per task: their stacked queries (x query heads per KV head) share each K/V block read; 16 keeps the
# accumulators (16 x 3 heads x 64 dims fp32 = 12 KB) in L1 and still leaves tasks for every thread.
TILE = 16


class SharedPrefixStep:
    """shared_prefix.c bound to one step's groups. `members`, `member_rows`, `lengths` [N], `group_starts`
    [G + 1], `prefix_blocks` [G]: int32; `tables`: the step's block tables (int32, original rows)."""

    def __init__(self, kernels: Kernels, dtype: torch.dtype, tables: torch.Tensor, members: torch.Tensor,
                 member_rows: torch.Tensor, lengths: torch.Tensor, group_starts: torch.Tensor,
                 prefix_blocks: torch.Tensor, block_size: int, scale: float) -> None:
        suffix = {torch.bfloat16: "bf16", torch.float32: "f32"}.get(dtype)
        if suffix is None:
            raise TypeError(f"shared_prefix: unsupported dtype {dtype} (bfloat16 or float32)")
        self.fn = kernels.shared_prefix[suffix]
        self.dtype = dtype
        self._keep = tuple(t.to(torch.int32).contiguous() for t in
                           (tables, members, member_rows, lengths, group_starts, prefix_blocks))
        tables, members, member_rows, lengths, group_starts, prefix_blocks = self._keep
        self.args = PrefixArgs(tables=tables.data_ptr(), members=members.data_ptr(),
                               member_rows=member_rows.data_ptr(), lengths=lengths.data_ptr(),
                               group_starts=group_starts.data_ptr(), prefix_blocks=prefix_blocks.data_ptr(),
                               groups=prefix_blocks.shape[0], block_size=block_size, max_blocks=tables.shape[1],
                               tile=TILE, scale=scale)
        self.args_ref = ctypes.byref(self.args)

    def __call__(self, q: torch.Tensor, out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """out [T, H, D] contiguous holds each grouped query's attention over its suffix; merged in place."""
        if q.stride(-1) != 1 or q.stride(1) != q.shape[2]:
            q = q.contiguous()
        dtype = self.dtype
        if q.dtype != dtype or out.dtype != dtype or k_cache.dtype != dtype or v_cache.dtype != dtype:
            raise ValueError(f"shared_prefix: q, out, k_cache and v_cache must all be {dtype}")
        if not (out.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()):
            raise ValueError("shared_prefix: out, k_cache and v_cache must be contiguous")
        a = self.args
        a.q, a.out, a.k_cache, a.v_cache = q.data_ptr(), out.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr()
        a.q_stride, a.head_stride = q.stride(0), k_cache.stride(0)
        a.heads, a.kv_heads, a.head_dim = q.shape[1], k_cache.shape[0], q.shape[2]
        if self.fn(self.args_ref) != 0:
            raise MemoryError("shared_prefix: a kernel thread could not allocate its scratch buffer")
