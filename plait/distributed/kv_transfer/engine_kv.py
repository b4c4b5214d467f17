"""Copying a prompt's KV out of one engine's cache and into another's prefix cache.

Both functions touch engine state, so they run in the engine thread between steps
(`AsyncLLM.call_in_engine`); nothing else writes the cache then, and no block changes hands.

Export reads the prompt's leading full blocks that the prefill engine's prefix cache still holds (the request
that computed them has ended; its full blocks stay cached until their memory is reused, and the export runs
right after it ends). Import writes them into free blocks of the decode engine and registers them under the
same prefix-cache keys a local computation would give, so the request submitted next hits them exactly like
a local prefix hit: no scheduler change, and the decode engine computes only the prompt's last 1 to
block_size tokens (the last prompt token always: its logits give the first token). Imported blocks are pinned
by an `ImportHold` until the request has been admitted (its own reference then keeps them); blocks the decode
engine already caches are reused, not written again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from plait.cache.block_pool import BlockKey
from plait.distributed.kv_transfer.payload import KVPayload

MAX_IMPORTED_FRACTION = 0.5  # of the decode pool that imports waiting for admission may pin together


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _slots(blocks: list[int], block_size: int, device: torch.device) -> torch.Tensor:
    base = torch.tensor(blocks, dtype=torch.long, device=device).unsqueeze(1) * block_size
    return (base + torch.arange(block_size, device=device)).reshape(-1)


def export_prefix(core, token_ids: list[int]) -> KVPayload:
    """The KV of `token_ids`' leading full blocks still cached in `core` (an EngineCore), never the block holding
    the last token (the decode engine computes that one). Engine thread only."""
    kv, cache = core.scheduler.kv, core.runner.cache
    match = kv.match_prefix(token_ids)
    heads, dim = cache.tensor.shape[2], cache.tensor.shape[4]
    payload = KVPayload(list(token_ids), match.num_tokens, cache.block_size, _dtype_name(cache.tensor.dtype),
                        heads, dim)
    if match.blocks:
        gathered = cache.tensor.index_select(3, _slots(match.blocks, cache.block_size, cache.tensor.device))
        payload.layers = [layer.contiguous().cpu().view(torch.uint8).reshape(-1).numpy() for layer in gathered]
    else:
        payload.layers = [np.zeros(0, dtype=np.uint8) for _ in range(cache.tensor.shape[0])]
    return payload


@dataclass(frozen=True)
class ImportHold:
    hold_id: int
    blocks: tuple[int, ...]  # pinned (one reference each) until released
    num_tokens: int  # leading prompt tokens the decode engine now finds cached
    num_written: int  # blocks written from the payload (the others were cached here already)


class KVImporter:
    """Imports payloads into one engine (an EngineCore) and pins them until `release`. Engine thread only."""

    def __init__(self, core, max_fraction: float = MAX_IMPORTED_FRACTION) -> None:
        self.core = core
        self.max_blocks = int(core.scheduler.kv.num_blocks * max_fraction)
        self._holds: dict[int, ImportHold] = {}
        self._next_id = 0
        self.num_imported_tokens = 0

    @property
    def num_held_blocks(self) -> int:
        return sum(len(h.blocks) for h in self._holds.values())

    def __len__(self) -> int:
        return len(self._holds)

    def check(self, payload: KVPayload) -> None:
        """ValueError when the payload's KV cannot be this engine's (other block size, dtype or shape)."""
        kv, cache = self.core.scheduler.kv, self.core.runner.cache
        if not kv.enable_prefix_caching:
            raise ValueError("the decode engine needs enable_prefix_caching=True to take transferred KV")
        ours = (cache.block_size, _dtype_name(cache.tensor.dtype), cache.tensor.shape[0], cache.tensor.shape[2],
                cache.tensor.shape[4])
        theirs = (payload.block_size, payload.dtype, payload.num_layers, payload.num_kv_heads, payload.head_dim)
        if ours != theirs:
            raise ValueError(f"transferred KV (block_size, dtype, layers, kv_heads, head_dim) = {theirs} does not "
                             f"fit this engine's cache {ours}: prefill and decode must run the same model, dtype "
                             f"and block_size")

    def import_payload(self, payload: KVPayload) -> ImportHold:
        self.check(payload)
        kv, cache = self.core.scheduler.kv, self.core.runner.cache
        pool, bs = kv.pool, cache.block_size
        budget = self.max_blocks - self.num_held_blocks
        tokens = payload.prompt_token_ids
        blocks: list[int] = []
        writes: list[tuple[int, int]] = []  # (our block, its index in the payload)
        parent = None
        for i in range(payload.num_tokens // bs):
            parent = BlockKey.chain(parent, tuple(tokens[i * bs: (i + 1) * bs]))
            if len(blocks) >= budget:
                break  # the rest is recomputed: a full pool of pins could keep every request waiting
            block = pool.lookup(parent)
            if block is not None:
                pool.touch(block)
            elif pool.num_free > 0:
                block = pool.allocate(1)[0]
                pool.register(block, parent)
                writes.append((block, i))
            else:
                break
            blocks.append(block)
        if writes:
            self._write(payload, writes)
        hold = ImportHold(self._next_id, tuple(blocks), len(blocks) * bs, len(writes))
        self._next_id += 1
        self._holds[hold.hold_id] = hold
        self.num_imported_tokens += len(writes) * bs
        return hold

    def _write(self, payload: KVPayload, writes: list[tuple[int, int]]) -> None:
        cache = self.core.runner.cache
        device, bs = cache.tensor.device, cache.block_size
        dest = _slots([b for b, _ in writes], bs, device)
        src = _slots([i for _, i in writes], bs, device)
        with warnings.catch_warnings():  # Ray hands read-only buffers; they are only read here
            warnings.simplefilter("ignore", UserWarning)
            for layer, raw in enumerate(payload.layers):
                data = torch.from_numpy(raw).view(cache.tensor.dtype).reshape(payload.layer_shape())
                cache.tensor[layer].index_copy_(2, dest, data.to(device).index_select(2, src))

    def release(self, hold_id: int) -> bool:
        """Unpin an import (its blocks stay cached; the admitted request holds its own references). False if it
        was already released."""
        hold = self._holds.pop(hold_id, None)
        if hold is None:
            return False
        for block in reversed(hold.blocks):
            self.core.scheduler.kv.pool.release(block)
        return True
