"""SchedulerOutput -> the packed tensors one forward pass needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.core.sched_output import ScheduledChunk
from plait.runner.attention import AttentionMetadata, PrefillSpan
from plait.runner.shared_prefix import MIN_SHARED_BLOCKS, build_plan


@dataclass
class InputBatch:
    chunks: list[ScheduledChunk]  # in packed order: single-token chunks first
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attention: AttentionMetadata
    offsets: list[int]  # first packed index of each chunk


def build_input_batch(chunks: list[ScheduledChunk], block_size: int, device: torch.device,
                      dtype: torch.dtype = torch.float32, attention_kernel: bool = False,
                      shared_prefix: bool = False, shared_prefix_min_blocks: int = MIN_SHARED_BLOCKS) -> InputBatch:
    """`dtype` is the model's: the additive attention mask is built in it. With `attention_kernel` the batch
    carries what the C kernel reads (block tables, each token's row and context length) instead of gathered
    slots, masks and prefill spans. With `shared_prefix`, one-token queries that share leading blocks attend to
    them together (runner/shared_prefix.py) when they share at least `shared_prefix_min_blocks` blocks: their own
    context then starts after the shared run."""
    singles = [c for c in chunks if len(c.token_ids) == 1]
    spans = [c for c in chunks if len(c.token_ids) > 1]
    ordered = singles + spans
    input_ids: list[int] = []
    positions: list[int] = []
    offsets: list[int] = []
    for chunk in ordered:
        offsets.append(len(input_ids))
        input_ids.extend(chunk.token_ids)
        positions.extend(range(chunk.start, chunk.start + len(chunk.token_ids)))

    # Block tables as one padded tensor, so slot lookups for every token are a single gather.
    width = max(len(c.block_table) for c in ordered)
    tables = torch.tensor([c.block_table + [0] * (width - len(c.block_table)) for c in ordered],
                          dtype=torch.long)
    lengths = torch.tensor([len(c.token_ids) for c in ordered])
    pos = torch.tensor(positions, dtype=torch.long)
    chunk_of_token = torch.repeat_interleave(torch.arange(len(ordered)), lengths)
    slot_mapping = tables[chunk_of_token, pos // block_size] * block_size + pos % block_size
    plan, skip = None, [0] * len(singles)  # skip: tokens of a single query's context its group attends to
    if shared_prefix and len(singles) > 1:
        plan, skip = build_plan([c.block_table for c in singles], [c.start for c in singles], block_size, device,
                                suffix_slots=not attention_kernel, min_blocks=shared_prefix_min_blocks)

    if attention_kernel:
        rows, lengths = chunk_of_token.to(torch.int32), (pos + 1).to(torch.int32)
        if plan is not None:  # a grouped query's own context: its table from the first unshared block on
            shifted = [i for i in range(len(singles)) if skip[i]]
            extra = torch.zeros(len(shifted), width, dtype=torch.long)
            for row, i in enumerate(shifted):
                rest = tables[i, skip[i] // block_size:]
                extra[row, : len(rest)] = rest
                rows[i] = len(ordered) + row
                lengths[i] -= skip[i]
            tables = torch.cat([tables, extra])
        meta = AttentionMetadata(slot_mapping=slot_mapping.to(device), num_single=len(singles), single_slots=None,
                                 single_mask=None, prefills=[], block_tables=tables.to(torch.int32),
                                 token_rows=rows, token_context_lens=lengths, shared_prefix=plan)
        return InputBatch(ordered, torch.tensor(input_ids, device=device), pos.to(device), meta, offsets)

    single_slots = single_mask = None
    if singles:
        context = torch.tensor([c.start + 1 for c in singles])
        first = torch.tensor(skip)
        max_blocks = -(-int(context.max()) // block_size)
        all_slots = (tables[: len(singles), :max_blocks, None] * block_size + torch.arange(block_size)).flatten(1)
        length = int((context - first).max())
        valid = torch.arange(length)[None, :] < (context - first)[:, None]
        # Padding reads the query's own first slot (always written, so finite) instead of whatever an
        # unwritten slot holds: a masked score gives probability 0, and 0 * NaN would still be NaN.
        index = torch.where(valid, first[:, None] + torch.arange(length)[None, :], first[:, None])
        single_slots = all_slots.gather(1, index)
        single_mask = torch.zeros(valid.shape, dtype=dtype).masked_fill_(~valid, float("-inf"))[None, :, None, :]

    prefills = []
    for i, chunk in enumerate(spans, start=len(singles)):
        context_slots = None
        if chunk.start > 0:
            n_ctx = chunk.start + len(chunk.token_ids)
            row = tables[i, : -(-n_ctx // block_size), None] * block_size + torch.arange(block_size)
            context_slots = row.flatten()[:n_ctx].to(device)
        prefills.append(PrefillSpan(offsets[i], offsets[i] + len(chunk.token_ids), chunk.start, context_slots))

    meta = AttentionMetadata(
        slot_mapping=slot_mapping.to(device),
        num_single=len(singles),
        single_slots=None if single_slots is None else single_slots.to(device),
        single_mask=None if single_mask is None else single_mask.to(device),
        prefills=prefills,
        shared_prefix=plan,
    )
    return InputBatch(ordered, torch.tensor(input_ids, device=device), pos.to(device), meta, offsets)
