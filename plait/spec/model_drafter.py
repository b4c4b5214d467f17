"""Drafts from a forward pass: k greedy single-token passes of a draft network over the paged KV cache.

early_exit: the target's own first L layers, its final norm and LM head (LayerSkip-style self-speculation). The
draft passes write layers < L of the drafted positions into the target's cache; the verification forward then
writes the same positions again through all layers, so nothing the draft left behind survives.

draft_model: a second, smaller model with the same vocabulary. Its KV lives in its own cache tensor indexed by the
target's block tables (same block ids, same block size), so allocation, prefix sharing, preemption and freeing are
the target's, with no second allocator. After every step it runs the step's batch too (`sync`), so its cache holds
every token the target computed: prompts, accepted tokens, cached prefixes.

Drafts are the draft's argmax: a deterministic (one-hot) proposal, so the rejection rule stays exact for sampling.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from plait.core.sched_output import ScheduledChunk
from plait.runner.attention import KVCache, PagedAttention
from plait.runner.input_batch import InputBatch, build_input_batch

Forward = Callable[[torch.Tensor, torch.Tensor, PagedAttention], torch.Tensor]


class ModelDrafter:
    def __init__(self, forward: Forward, compute_logits: Callable[[torch.Tensor], torch.Tensor], cache: KVCache,
                 heads: tuple[int, int, int], kernels=None, sync: bool = False) -> None:
        """`forward(input_ids, positions, attention)` -> hidden states of the draft network; `cache`: the KV
        cache it reads and writes; `sync`: the draft has its own cache and must see every computed token."""
        self.forward, self.compute_logits = forward, compute_logits
        self.cache, self.heads, self.kernels, self.needs_sync = cache, heads, kernels, sync

    def _attention(self, batch: InputBatch) -> PagedAttention:
        return PagedAttention(self.cache, batch.attention, *self.heads, kernels=self.kernels)

    def draft(self, chunks: list[ScheduledChunk], device: torch.device) -> float:
        """Fill the draft slots (the last num_draft token ids) of every chunk that has them; returns seconds."""
        drafting = [c for c in chunks if c.num_draft]
        if not drafting:
            return 0.0
        start = time.perf_counter()
        for j in range(max(c.num_draft for c in drafting)):
            active = [c for c in drafting if c.num_draft > j]
            passes = []
            for c in active:
                last = len(c.token_ids) - c.num_draft - 1  # the chunk's last real token
                passes.append(ScheduledChunk(c.request_id, [c.token_ids[last + j]], c.start + last + j,
                                             c.block_table, sample=True))
            batch = build_input_batch(passes, self.cache.block_size, device, self.cache.tensor.dtype,
                                      attention_kernel=self.kernels is not None)
            hidden = self.forward(batch.input_ids, batch.positions, self._attention(batch))
            tokens = self.compute_logits(hidden).argmax(dim=-1).tolist()
            # build_input_batch keeps single-token chunks in order, so row i is passes[i].
            for c, token in zip(active, tokens):
                c.token_ids[len(c.token_ids) - c.num_draft + j] = token
        return time.perf_counter() - start

    def sync(self, batch: InputBatch) -> None:
        """Run the step's batch through the draft so its cache holds what the target computed."""
        if self.needs_sync:
            self.forward(batch.input_ids, batch.positions, self._attention(batch))
