"""Attention over a packed batch with a paged KV cache.

On the CPU the whole batch goes through one call of plait's C kernel (runner/native), which reads each token's
context straight out of its sequence's blocks: decodes, fresh prompts and prompts continuing cached ones alike.

Elsewhere (or without a C compiler) the PyTorch path runs. The packed batch is ordered: single-token queries first
(decodes, and prompt chunks of one token), then multi-token spans (prefill chunks). Single-token queries run
together as one grouped-query batched matmul over their gathered context (PyTorch's CPU SDPA is ~15x slower for
one-token queries in bf16, design.md). Multi-token spans are few per step and run through SDPA.

Sliding-window layers (Gemma 3's local layers) pass `window`: each token then attends only to the last `window`
positions, itself included (key position > query position - window), as the reference implementation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plait.runner.native import Kernels
from plait.runner.native.ops import PagedAttentionStep
from plait.runner.shared_prefix import SharedPrefixPlan, apply_shared_prefix


@dataclass
class PrefillSpan:
    start: int  # first token of the span in the packed batch
    end: int
    num_past: int  # tokens of this request already in the cache before this span
    context_slots: torch.Tensor | None  # [num_past + (end - start)] cache slots; None when num_past == 0


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of every token in the batch
    num_single: int  # the first num_single tokens are one-token queries, one request each
    # PyTorch path: every single query's context slots (padded) and an additive mask (0 real, -inf padding).
    single_slots: torch.Tensor | None  # [B, L]
    single_mask: torch.Tensor | None  # [1, B, 1, L]
    prefills: list[PrefillSpan]
    # Kernel path instead (then single_slots, single_mask and prefills are unused): int32 block tables, each
    # token's row in them and each token's context length (position + 1).
    block_tables: torch.Tensor | None = None  # [chunks, max_blocks]
    token_rows: torch.Tensor | None = None  # [T]
    token_context_lens: torch.Tensor | None = None  # [T]
    # One-token queries that attend to shared leading blocks as a group (runner/shared_prefix.py); their context
    # above (slots or block-table row and length) then covers only what follows the shared run.
    shared_prefix: SharedPrefixPlan | None = None


class KVCache:
    """One preallocated pool: [layers, 2 (K, V), kv_heads, num_slots, head_dim]; slot = block * block_size + offset.

    Heads lead so that gathering a request's context gives [kv_heads, B, L, head_dim], which batched matmuls take
    as it is (the transpose for q @ k^T is a BLAS flag, not a copy). Keeping K and V in separate tensors matters:
    an interleaved [.., 2 * head_dim] row halves the gathers but makes bmm copy its strided operands (measured
    1.6x slower per decode step).
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.head_dim = head_dim
        # Uninitialised on purpose: pages are only touched when KV is written, so a large pool costs no start-up
        # time. Attention never reads a slot that was not written (see input_batch's padding).
        self.tensor = torch.empty(num_layers, 2, num_kv_heads, num_blocks * block_size, head_dim,
                                  dtype=dtype, device=device)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks' K and V, source -> destination, in every layer (forks' copy-on-write)."""
        bs = self.block_size
        for src, dst in pairs:
            self.tensor[:, :, :, dst * bs: (dst + 1) * bs] = self.tensor[:, :, :, src * bs: (src + 1) * bs]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return num_layers * 2 * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class PagedAttention:
    """The `attention` callable a model receives for one step."""

    def __init__(self, cache: KVCache, meta: AttentionMetadata, num_heads: int, num_kv_heads: int,
                 head_dim: int, kernels: Kernels | None = None) -> None:
        self.cache, self.meta = cache, meta
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5
        self.kernel_step = None
        self._window_masks: dict[int, torch.Tensor] = {}  # PyTorch path: single-query masks per window size
        if meta.block_tables is not None:
            self.kernel_step = PagedAttentionStep(kernels, cache.tensor.dtype, meta.slot_mapping, meta.block_tables,
                                                  meta.token_rows, meta.token_context_lens, cache.block_size,
                                                  self.scale)
        self.shared_step = None  # the C kernel for shared prefixes, where the C kernels run
        if meta.shared_prefix is not None and self.kernel_step is not None:
            self.shared_step = meta.shared_prefix.kernel_step(kernels, cache.tensor.dtype, meta.block_tables,
                                                              cache.block_size, self.scale)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 window: int | None = None) -> torch.Tensor:
        """`window`: attend to the last `window` positions only (sliding-window layers); None: all of them."""
        has_shared = self.shared_step is not None or self.meta.shared_prefix is not None
        if has_shared and window is not None:
            # The shared run is attended whole: models with windowed layers run without shared-prefix groups.
            raise ValueError("shared-prefix attention cannot serve a sliding-window layer")
        out = self._attend(layer, q, k, v, window)
        if self.shared_step is not None:
            self.shared_step(q, out, self.cache.tensor[layer, 0], self.cache.tensor[layer, 1])
        elif self.meta.shared_prefix is not None:
            apply_shared_prefix(self.meta.shared_prefix, q, out, self.cache.tensor[layer, 0],
                                self.cache.tensor[layer, 1], self.scale)
        return out

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                window: int | None = None) -> torch.Tensor:
        meta = self.meta
        k_cache, v_cache = self.cache.tensor[layer, 0], self.cache.tensor[layer, 1]  # [kv, slots, d]
        if self.kernel_step is not None:  # the kernel writes k/v into the cache itself
            return self.kernel_step(q, k, v, k_cache, v_cache, window=window or 0)
        k_cache.index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
        v_cache.index_copy_(1, meta.slot_mapping, v.transpose(0, 1))
        if not meta.prefills:
            return self._single(q, k_cache, v_cache, window)
        out = torch.empty_like(q)
        if meta.num_single:
            out[: meta.num_single] = self._single(q[: meta.num_single], k_cache, v_cache, window)
        for run in _fresh_runs(meta.prefills):
            if len(run) > 1 or run[0].num_past == 0:
                self._fresh(q, k, v, run, out, window)
            else:
                span = run[0]
                out[span.start: span.end] = self._span(q, k_cache, v_cache, span, window)
        return out

    def _single_mask(self, window: int | None) -> torch.Tensor:
        """The single queries' additive mask, with positions that left the window masked too."""
        mask = self.meta.single_mask
        if window is None or window >= mask.shape[-1]:
            return mask
        if window not in self._window_masks:
            context = (mask[0, :, 0, :] == 0).sum(-1)  # each query's context length (its position + 1)
            old = torch.arange(mask.shape[-1], device=mask.device)[None, :] < (context - window)[:, None]
            self._window_masks[window] = mask.masked_fill(old[None, :, None, :], float("-inf"))
        return self._window_masks[window]

    def _single(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                window: int | None = None) -> torch.Tensor:
        meta = self.meta
        batch, d = q.shape[0], self.head_dim
        group = self.num_heads // self.num_kv_heads
        # Context of every query: [kv, B, L, d]; queries grouped per kv head: [kv, B, group, d].
        slots = meta.single_slots.flatten()
        keys = k_cache.index_select(1, slots).view(self.num_kv_heads, batch, -1, d)
        values = v_cache.index_select(1, slots).view(self.num_kv_heads, batch, -1, d)
        # Scale the few queries rather than the many scores; softmax accumulates in fp32 whatever the model dtype.
        queries = (q * self.scale).view(batch, self.num_kv_heads, group, d).transpose(0, 1)
        scores = torch.matmul(queries, keys.transpose(-1, -2)) + self._single_mask(window)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, values)  # [kv, B, group, d]
        return out.transpose(0, 1).reshape(batch, self.num_heads, d)

    def _fresh(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, run: list[PrefillSpan],
               out: torch.Tensor, window: int | None = None) -> None:
        """Equal-length prompt chunks with nothing cached before them: one causal SDPA call for all of them."""
        start, end, n = run[0].start, run[-1].end, len(run)
        length = run[0].end - run[0].start

        def heads_first(x: torch.Tensor) -> torch.Tensor:
            return x[start:end].view(n, length, x.shape[1], self.head_dim).transpose(1, 2)

        if window is not None and length > window:
            pos = torch.arange(length, device=q.device)
            mask = _causal_window_mask(pos, pos, window)
            result = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask=mask,
                                                    scale=self.scale, enable_gqa=True)
        else:
            result = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), is_causal=True,
                                                    scale=self.scale, enable_gqa=True)
        out[start:end] = result.transpose(1, 2).reshape(end - start, self.num_heads, self.head_dim)

    def _span(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              span: PrefillSpan, window: int | None = None) -> torch.Tensor:
        """A prompt chunk continuing a request whose earlier tokens are in the cache."""
        queries = q[span.start: span.end].transpose(0, 1)[None]
        keys = k_cache.index_select(1, span.context_slots)
        values = v_cache.index_select(1, span.context_slots)
        q_pos = torch.arange(span.num_past, span.num_past + span.end - span.start, device=q.device)
        mask = _causal_window_mask(q_pos, torch.arange(keys.shape[1], device=q.device), window)
        out = F.scaled_dot_product_attention(queries, keys[None], values[None],
                                             attn_mask=mask, scale=self.scale, enable_gqa=True)
        return out[0].transpose(0, 1)


def _causal_window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[Q, K] bool: key at or before the query and, with a window, fewer than `window` positions back."""
    mask = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        mask &= k_pos[None, :] > q_pos[:, None] - window
    return mask


def _fresh_runs(spans: list[PrefillSpan]) -> list[list[PrefillSpan]]:
    """Split spans into runs that can share one SDPA call: adjacent, uncached, equal length. Others stand alone."""
    runs: list[list[PrefillSpan]] = []
    for span in spans:
        prev = runs[-1][-1] if runs else None
        if (prev is not None and span.num_past == 0 and prev.num_past == 0 and prev.end == span.start
                and span.end - span.start == prev.end - prev.start):
            runs[-1].append(span)
        else:
            runs.append([span])
    return runs
