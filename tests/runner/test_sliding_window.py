"""Sliding-window attention (Gemma 3's local layers): the C kernel and the PyTorch path against plain masked
attention, over windows that start inside a block, on a block edge, and wider than the context."""

from __future__ import annotations

import pytest
import torch

from plait.core.sched_output import ScheduledChunk
from plait.runner import native
from plait.runner.attention import KVCache, PagedAttention
from plait.runner.input_batch import build_input_batch

kernels = native.load_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason=f"C kernels unavailable: {native.unavailable_reason()}")


def masked_reference(q, k_cache, v_cache, tables, rows, lengths, block_size, scale, window):
    """fp64 attention of token t over all positions < lengths[t] with a -inf mask on those that left the window."""
    tokens, heads, dim = q.shape
    group = heads // k_cache.shape[0]
    out = torch.empty(tokens, heads, dim, dtype=torch.float64)
    for t in range(tokens):
        table, n = tables[int(rows[t])], int(lengths[t])
        slots = torch.tensor([int(table[i // block_size]) * block_size + i % block_size for i in range(n)])
        keys = k_cache[:, slots].double().repeat_interleave(group, 0)
        values = v_cache[:, slots].double().repeat_interleave(group, 0)
        scores = torch.einsum("hd,hnd->hn", q[t].double() * scale, keys)
        if window:
            scores[:, : max(0, n - window)] = float("-inf")
        out[t] = torch.einsum("hn,hnd->hd", torch.softmax(scores, -1), values)
    return out


def case(heads, kv_heads, dim, block_size, dtype, seed):
    """Decodes at contexts 1..70 plus a 12-token chunk continuing 30 cached tokens; new K/V already cached."""
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 7, 16, 17, 33, 70] + list(range(31, 43))
    rows = list(range(6)) + [6] * 12
    width = -(-70 // block_size)
    num_blocks = 7 * width + 2
    tables = torch.randperm(num_blocks, generator=g)[: 7 * width].view(7, width).to(torch.int32)
    cache = torch.randn(2, kv_heads, num_blocks * block_size, dim, generator=g).to(dtype)
    slots = torch.tensor([int(tables[r, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                          for r, n in zip(rows, lengths)])
    q = torch.randn(len(rows), heads, dim, generator=g).to(dtype)
    k, v = cache[0][:, slots].transpose(0, 1).contiguous(), cache[1][:, slots].transpose(0, 1).contiguous()
    return dict(q=q, k=k, v=v, k_cache=cache[0], v_cache=cache[1], slot_mapping=slots, block_tables=tables,
                rows=torch.tensor(rows, dtype=torch.int32), context_lens=torch.tensor(lengths, dtype=torch.int32),
                block_size=block_size, scale=dim ** -0.5)


@needs_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 1, 256), (8, 2, 64), (4, 2, 128), (6, 3, 24)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("window", [0, 1, 5, 16, 20, 100])
def test_kernel_window_matches_masked_attention(heads, kv_heads, dim, dtype, tol, window):
    c = case(heads, kv_heads, dim, 16 if window != 5 else 5, dtype, seed=window)
    step = native.ops.PagedAttentionStep(kernels, dtype, c["slot_mapping"], c["block_tables"], c["rows"],
                                         c["context_lens"], c["block_size"], c["scale"])
    got = step(c["q"], c["k"], c["v"], c["k_cache"], c["v_cache"], window=window)
    want = masked_reference(c["q"], c["k_cache"], c["v_cache"], c["block_tables"], c["rows"], c["context_lens"],
                            c["block_size"], c["scale"], window)
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


@needs_kernels
def test_kernel_rejects_negative_window():
    c = case(4, 1, 64, 16, torch.float32, seed=0)
    step = native.ops.PagedAttentionStep(kernels, torch.float32, c["slot_mapping"], c["block_tables"], c["rows"],
                                         c["context_lens"], c["block_size"], c["scale"])
    with pytest.raises(ValueError, match="window"):
        step(c["q"], c["k"], c["v"], c["k_cache"], c["v_cache"], window=-1)


def run_paged(chunks, q, k, v, cache, window, use_kernel):
    batch = build_input_batch(chunks, cache.block_size, torch.device("cpu"), cache.tensor.dtype,
                              attention_kernel=use_kernel)
    attn = PagedAttention(cache, batch.attention, q.shape[1], k.shape[1], q.shape[2],
                          kernels=kernels if use_kernel else None)
    return batch, attn(0, q, k, v, window=window)


def naive_sequence_attention(q, k, v, window):
    """q, k, v of one whole sequence [n, heads, d]: causal attention with the window as an explicit mask."""
    n, heads, d = q.shape
    group = heads // k.shape[1]
    keys, values = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double() * d ** -0.5, keys)
    pos = torch.arange(n)
    allowed = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), values)


@pytest.mark.parametrize("use_kernel", [False, pytest.param(True, marks=needs_kernels)])
@pytest.mark.parametrize("chunk", [40, 7, 1])
def test_chunked_prefill_across_the_window_edge(use_kernel, chunk):
    """A 40-token sequence with window 12, prefilled in chunks of 40 / 7 / 1 through the paged cache, plus a
    second fresh sequence in the same steps (the PyTorch path's batched fresh-prompt branch): every output equals
    whole-sequence masked attention."""
    g = torch.Generator().manual_seed(7)
    n, window, heads, kv_heads, d, bs = 40, 12, 4, 2, 32, 8
    q, k, v = (torch.randn(n, h, d, generator=g) for h in (heads, kv_heads, kv_heads))
    cache = KVCache(1, 16, bs, kv_heads, d, torch.float32)
    want = naive_sequence_attention(q, k, v, window)
    got = torch.empty(n, heads, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        chunks = [ScheduledChunk("a", list(range(start, end)), start, list(range(5)), sample=False)]
        _, out = run_paged(chunks, q[start:end], k[start:end], v[start:end], cache, window, use_kernel)
        got[start:end] = out.double()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_single_queries_and_fresh_runs_use_the_window():
    """PyTorch path: decodes (single queries) and several equal fresh prompts in one step."""
    g = torch.Generator().manual_seed(3)
    heads, kv_heads, d, bs, window = 2, 1, 16, 4, 6
    cache = KVCache(1, 32, bs, kv_heads, d, torch.float32)
    # Fill sequence "a" (blocks 0..4) with 15 tokens, then decode token 15; two fresh 10-token prompts b, c.
    qa, ka, va = (torch.randn(16, h, d, generator=g) for h in (heads, kv_heads, kv_heads))
    run_paged([ScheduledChunk("a", list(range(15)), 0, list(range(5)), sample=False)],
              qa[:15], ka[:15], va[:15], cache, window, use_kernel=False)
    qb, kb, vb = (torch.randn(20, h, d, generator=g) for h in (heads, kv_heads, kv_heads))
    chunks = [ScheduledChunk("a", [15], 15, list(range(5)), sample=True),
              ScheduledChunk("b", list(range(10)), 0, [10, 11, 12], sample=True),
              ScheduledChunk("c", list(range(10)), 0, [13, 14, 15], sample=True)]
    q = torch.cat([qa[15:], qb]); k = torch.cat([ka[15:], kb]); v = torch.cat([va[15:], vb])
    _, out = run_paged(chunks, q, k, v, cache, window, use_kernel=False)
    torch.testing.assert_close(out[0].double(), naive_sequence_attention(qa, ka, va, window)[15], atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(out[1:11].double(), naive_sequence_attention(qb[:10], kb[:10], vb[:10], window),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[11:].double(), naive_sequence_attention(qb[10:], kb[10:], vb[10:], window),
                               atol=1e-5, rtol=1e-5)
