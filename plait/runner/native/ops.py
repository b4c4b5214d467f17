"""Tensor-level wrappers around the C kernels: check what the C code assumes, then pass pointers."""

from __future__ import annotations

import ctypes

import torch

from plait.runner.native import AttentionArgs, Kernels

_SUFFIX = {torch.bfloat16: "bf16", torch.float32: "f32"}


def _suffix(op: str, dtype: torch.dtype) -> str:
    if dtype not in _SUFFIX:
        raise TypeError(f"{op}: unsupported dtype {dtype} (bfloat16 or float32)")
    return _SUFFIX[dtype]


def _rows_contiguous(t: torch.Tensor) -> bool:
    """Rows may be strided (slices of a fused tensor); everything inside a row must be dense."""
    return t.stride(-1) == 1 and all(t.stride(i) == t.stride(i + 1) * t.shape[i + 1] for i in range(1, t.dim() - 1))


def paged_attention(kernels: Kernels, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                    rows: torch.Tensor, context_lens: torch.Tensor, block_size: int, scale: float) -> torch.Tensor:
    """Write this step's k/v into the cache, then causal attention of every token over its own sequence.

    q: [T, H, D]; k, v: [T, KV, D] (rows may be strided, heads and dims dense); k_cache/v_cache: [KV, slots, D]
    contiguous; slot_mapping: [T] int64; block_tables: [R, max_blocks] int32; rows: [T] int32, each token's row of
    block_tables; context_lens: [T] int32, each token's position + 1. Returns [T, H, D] in q's dtype.
    """
    suffix = _suffix("paged_attention", q.dtype)
    tokens, heads, dim = q.shape
    kv_heads = k_cache.shape[0]
    if heads % kv_heads:
        raise ValueError(f"paged_attention: {heads} query heads do not split into {kv_heads} kv heads")
    q, k, v = (t if _rows_contiguous(t) else t.contiguous() for t in (q, k, v))
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype or t.device.type != "cpu":
            raise ValueError(f"paged_attention: {name} must be a CPU {q.dtype} tensor")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("paged_attention: k_cache and v_cache must be contiguous")
    if k.shape != (tokens, kv_heads, dim) or v.shape != k.shape:
        raise ValueError(f"paged_attention: k and v must be [{tokens}, {kv_heads}, {dim}]")
    for name, t, dtype in (("slot_mapping", slot_mapping, torch.int64), ("block_tables", block_tables, torch.int32),
                           ("rows", rows, torch.int32), ("context_lens", context_lens, torch.int32)):
        if t.dtype != dtype:
            raise ValueError(f"paged_attention: {name} must be {dtype}")
    if rows.shape != (tokens,) or context_lens.shape != (tokens,) or slot_mapping.shape != (tokens,):
        raise ValueError(f"paged_attention: slot_mapping, rows and context_lens need one entry per token ({tokens})")
    slot_mapping, block_tables, rows, context_lens = (
        t.contiguous() for t in (slot_mapping, block_tables, rows, context_lens))
    out = torch.empty(tokens, heads, dim, dtype=q.dtype)
    args = AttentionArgs(
        q=q.data_ptr(), k_new=k.data_ptr(), v_new=v.data_ptr(), k_cache=k_cache.data_ptr(),
        v_cache=v_cache.data_ptr(), out=out.data_ptr(), slots=slot_mapping.data_ptr(),
        tables=block_tables.data_ptr(), rows=rows.data_ptr(), lengths=context_lens.data_ptr(),
        q_stride=q.stride(0), k_stride=k.stride(0), v_stride=v.stride(0), head_stride=k_cache.stride(0),
        tokens=tokens, heads=heads, kv_heads=kv_heads, head_dim=dim, block_size=block_size,
        max_blocks=block_tables.shape[1], scale=scale)
    if kernels.paged_attention[suffix](ctypes.byref(args)) != 0:
        raise MemoryError("paged_attention: a kernel thread could not allocate its scratch buffer")
    return out


def add_rms_norm(kernels: Kernels, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim; with `residual`, of x + residual. Returns (normed, the sum: x without residual)."""
    suffix = _suffix("add_rms_norm", x.dtype)
    x = x.contiguous()
    dim = x.shape[-1]
    if weight.shape != (dim,) or weight.dtype != x.dtype:
        raise ValueError(f"add_rms_norm: weight must be [{dim}] {x.dtype}")
    out = torch.empty_like(x)
    total = x
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError("add_rms_norm: residual must match x in shape and dtype")
        residual = residual.contiguous()
        total = torch.empty_like(x)
    kernels.add_rms_norm[suffix](x.data_ptr(), None if residual is None else residual.data_ptr(),
                                 weight.contiguous().data_ptr(), total.data_ptr(), out.data_ptr(),
                                 x.numel() // dim, dim, eps)
    return out, total


def silu_mul(kernels: Kernels, gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] along the last dim."""
    suffix = _suffix("silu_mul", gate_up.dtype)
    gate_up = gate_up.contiguous()
    dim = gate_up.shape[-1] // 2
    out = torch.empty(*gate_up.shape[:-1], dim, dtype=gate_up.dtype)
    kernels.silu_mul[suffix](gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // (2 * dim), dim)
    return out


def rope_(kernels: Kernels, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in place: x [T, heads, D] (rows may be strided), cos/signed_sin [T, 1, D]. Returns x."""
    suffix = _suffix("rope", x.dtype)
    tokens, heads, dim = x.shape
    if not _rows_contiguous(x):
        raise ValueError("rope_: x must have dense heads and dims (rows may be strided)")
    cos, signed_sin = (t.to(x.dtype).reshape(tokens, dim).contiguous() for t in (cos, signed_sin))
    kernels.rope[suffix](x.data_ptr(), x.stride(0), cos.data_ptr(), signed_sin.data_ptr(), tokens, heads, dim)
    return x
