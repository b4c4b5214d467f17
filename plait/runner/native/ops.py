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
    strides, shape = t.stride(), t.shape
    return strides[-1] == 1 and all(strides[i] == strides[i + 1] * shape[i + 1] for i in range(1, len(shape) - 1))


class PagedAttentionStep:
    """The attention kernel bound to one step's batch layout: what is the same for every layer (slots, block
    tables, each token's row and context length) is checked and packed once, so each layer's call only fills in
    its own tensors. At batch 1 a step is bound by Python, and per-call argument checks were ~1.5 ms of ~11 ms."""

    def __init__(self, kernels: Kernels, dtype: torch.dtype, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                 rows: torch.Tensor, context_lens: torch.Tensor, block_size: int, scale: float) -> None:
        self.fn = kernels.paged_attention[_suffix("paged_attention", dtype)]
        self.dtype = dtype
        tokens = rows.shape[0]
        for name, t, want in (("slot_mapping", slot_mapping, torch.int64), ("block_tables", block_tables, torch.int32),
                              ("rows", rows, torch.int32), ("context_lens", context_lens, torch.int32)):
            if t.dtype != want:
                raise ValueError(f"paged_attention: {name} must be {want}")
        if rows.shape != (tokens,) or context_lens.shape != (tokens,) or slot_mapping.shape != (tokens,):
            raise ValueError("paged_attention: slot_mapping, rows and context_lens need one entry per token "
                             f"({tokens})")
        # Kept as attributes: the struct holds raw pointers into them.
        self._keep = tuple(t.contiguous() for t in (slot_mapping, block_tables, rows, context_lens))
        slots, tables, rows_, lengths = self._keep
        self.tokens = tokens
        self.args = AttentionArgs(slots=slots.data_ptr(), tables=tables.data_ptr(), rows=rows_.data_ptr(),
                                  lengths=lengths.data_ptr(), tokens=tokens, block_size=block_size,
                                  max_blocks=tables.shape[1], scale=scale)
        self.args_ref = ctypes.byref(self.args)

    def for_fused_layer(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        """The argument struct with one layer's cache filled in, for decoder_layer.c, which fills in q/k/v, the
        output and the head counts itself (no window: the fused layer serves full-attention models only)."""
        if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.dtype != self.dtype:
            raise ValueError(f"paged_attention: k_cache and v_cache must be contiguous {self.dtype} tensors")
        a = self.args
        a.k_cache, a.v_cache, a.head_stride, a.window = k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), 0
        return self.args_ref

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, window: int = 0) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, KV, D] (rows may be strided, heads and dims dense); k_cache/v_cache:
        [KV, slots, D] contiguous. Writes k/v into the cache, returns attention [T, H, D]. `window` > 0: each
        token attends to its last `window` positions only (sliding-window layers)."""
        if window < 0:
            raise ValueError(f"paged_attention: window must be >= 0 (0: no window), got {window}")
        tokens, heads, dim = q.shape
        kv_heads = k_cache.shape[0]
        if tokens != self.tokens or heads % kv_heads:
            raise ValueError(f"paged_attention: q is {tuple(q.shape)} for {self.tokens} tokens, {kv_heads} kv heads")
        # Checks kept cheap (this runs once per layer per step): dtypes, density, shapes; the kernel does the rest.
        if not _rows_contiguous(q):
            q = q.contiguous()
        if not _rows_contiguous(k):
            k = k.contiguous()
        if not _rows_contiguous(v):
            v = v.contiguous()
        dtype = self.dtype
        if q.dtype != dtype or k.dtype != dtype or v.dtype != dtype or k_cache.dtype != dtype or v_cache.dtype != dtype:
            raise ValueError(f"paged_attention: q, k, v, k_cache and v_cache must all be {dtype}")
        if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or q.device.type != "cpu":
            raise ValueError("paged_attention: k_cache and v_cache must be contiguous CPU tensors")
        if k.shape != (tokens, kv_heads, dim) or v.shape != k.shape:
            raise ValueError(f"paged_attention: k and v must be [{tokens}, {kv_heads}, {dim}]")
        out = torch.empty(tokens, heads, dim, dtype=q.dtype)
        a = self.args
        a.q, a.k_new, a.v_new = q.data_ptr(), k.data_ptr(), v.data_ptr()
        a.k_cache, a.v_cache, a.out = k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr()
        a.q_stride, a.k_stride, a.v_stride, a.head_stride = q.stride(0), k.stride(0), v.stride(0), k_cache.stride(0)
        a.heads, a.kv_heads, a.head_dim = heads, kv_heads, dim
        a.window = window
        if self.fn(self.args_ref) != 0:
            raise MemoryError("paged_attention: a kernel thread could not allocate its scratch buffer")
        return out


def paged_attention(kernels: Kernels, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                    rows: torch.Tensor, context_lens: torch.Tensor, block_size: int, scale: float) -> torch.Tensor:
    """Write this step's k/v into the cache, then causal attention of every token over its own sequence.

    slot_mapping: [T] int64; block_tables: [R, max_blocks] int32; rows: [T] int32, each token's row of
    block_tables; context_lens: [T] int32, each token's position + 1. One-off form of PagedAttentionStep.
    """
    step = PagedAttentionStep(kernels, q.dtype, slot_mapping, block_tables, rows, context_lens, block_size, scale)
    return step(q, k, v, k_cache, v_cache)


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
    if cos.shape != (tokens, 1, dim) or signed_sin.shape != cos.shape:
        raise ValueError(f"rope_: cos and signed_sin must be [{tokens}, 1, {dim}]")
    if cos.dtype != x.dtype or not cos.is_contiguous():
        cos = cos.to(x.dtype).contiguous()
    if signed_sin.dtype != x.dtype or not signed_sin.is_contiguous():
        signed_sin = signed_sin.to(x.dtype).contiguous()
    kernels.rope[suffix](x.data_ptr(), x.stride(0), cos.data_ptr(), signed_sin.data_ptr(), tokens, heads, dim)
    return x
