"""Shared-prefix attention (Hydragen) for the one-token queries of a step.

When several decoding sequences hold the same leading KV blocks (the same physical block ids: n samples of one
prompt, forks, prompts behind one cached system prompt), their queries are stacked and attend to those shared
blocks once: one matrix-matrix product per KV head that reads the prefix KV once, instead of one matrix-vector pass
per sequence. Each sequence attends to its own suffix (the blocks after the shared run) as before, and the two
partial results are merged with their log-sum-exp:

    out = a * out_prefix + (1 - a) * out_suffix,   a = sigmoid(lse_prefix - lse_suffix)

which is softmax over [prefix | suffix] split in two (exact up to rounding).

Groups are found from the block tables every step, with no caller hints: decodes whose tables start with the same
block form a candidate group, and its shared run is the longest common run of leading blocks of all members.
Nested sharing (system prompt -> question -> samples) shares at least that common run; each member reads the rest
of its context in its suffix. A decode's own current block is never shared (only full blocks are), so every suffix
holds at least the query's own token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A group needs this many members and shared blocks before stacking pays for its extra small ops.
MIN_GROUP_SIZE = 2
MIN_SHARED_BLOCKS = 2


# Where the scores come from the bf16 dot-product instruction, the plain kernel runs at nearly the same speed as the
# shared one and the prefix KV of a small model stays in cache, so sharing only pays from a longer shared run.
# Measured (SmolLM2-135M, 64 sequences, AVX-512 EPYC, `plait bench shared-prefix --repeats 2`, decode phase,
# on/off, four pairs over two runs): 0.88-0.93x at 256 shared tokens, 1.03-1.33x at 1,024, 1.13-1.44x at 4,096.
BF16_DOT_MIN_SHARED_TOKENS = 1024


def default_min_shared_blocks(dtype: torch.dtype, kernels, block_size: int) -> int:
    """The shortest shared run (in blocks) a group needs by default (`shared_prefix_attention=None`): 2 blocks,
    except for a bf16 cache on a CPU whose attention kernel computes bf16 scores with the bf16 dot-product
    instruction, where it is BF16_DOT_MIN_SHARED_TOKENS (docs/many_samples.md)."""
    if dtype == torch.bfloat16 and kernels is not None and getattr(kernels, "has_bf16_dot", False):
        return max(MIN_SHARED_BLOCKS, -(-BF16_DOT_MIN_SHARED_TOKENS // block_size))
    return MIN_SHARED_BLOCKS


def find_groups(tables: list[list[int]], first_blocks: list[int], min_size: int = MIN_GROUP_SIZE,
                min_blocks: int = MIN_SHARED_BLOCKS) -> list[tuple[list[int], int]]:
    """-> [(member indices into `tables`, shared leading blocks)]. `first_blocks[i]` bounds member i's share:
    the index of the block holding its query (never shared)."""
    by_first: dict[int, list[int]] = {}
    for i, table in enumerate(tables):
        if table and first_blocks[i] > 0:
            by_first.setdefault(table[0], []).append(i)
    groups = []
    for members in by_first.values():
        if len(members) < min_size:
            continue
        shared = min(first_blocks[i] for i in members)
        head = tables[members[0]]
        for i in members[1:]:
            table = tables[i]
            n = 0
            while n < shared and table[n] == head[n]:
                n += 1
            shared = n
        if shared >= min_blocks:
            groups.append((members, shared))
    return groups


@dataclass
class SharedPrefixPlan:
    """One step's groups: built once per step (input_batch), used by every layer."""

    members: list[torch.Tensor]  # per group: packed indices of its one-token queries
    prefix_slots: list[torch.Tensor]  # per group: cache slots of the shared run [P]
    tokens: torch.Tensor  # all grouped packed indices, concatenated in group order [N]
    # Suffix of every grouped query, padded: slots [N, Ls] (padding repeats a real slot) and additive mask.
    suffix_slots: torch.Tensor
    suffix_mask: torch.Tensor  # [N, Ls] 0 for real positions, -inf for padding
    # What the C kernel reads instead (int32): each grouped query's context length, where each group starts in
    # `tokens`, and each group's shared blocks. A one-token query's packed index is also its block-table row.
    lengths: torch.Tensor | None = None
    group_starts: torch.Tensor | None = None
    prefix_blocks: torch.Tensor | None = None

    def kernel_step(self, kernels, dtype: torch.dtype, block_tables: torch.Tensor, block_size: int,
                    scale: float):
        """The C kernel (native/shared_prefix.c) bound to this plan."""
        from plait.runner.native.shared_prefix_ops import SharedPrefixStep

        return SharedPrefixStep(kernels, dtype, block_tables, self.tokens, self.tokens, self.lengths,
                                self.group_starts, self.prefix_blocks, block_size, scale)

    @property
    def num_groups(self) -> int:
        return len(self.members)

    def prefix_tokens(self) -> int:
        return sum(int(s.numel()) for s in self.prefix_slots)


def build_plan(tables: list[list[int]], positions: list[int], block_size: int, device: torch.device,
               suffix_slots: bool = True, min_blocks: int = MIN_SHARED_BLOCKS) -> tuple[SharedPrefixPlan | None,
                                                                                     list[int]]:
    """Plan the groups of the one-token queries whose block tables and positions are given (packed order).
    Returns (plan or None, each query's shared prefix length in tokens: 0 outside any group). The C kernel reads
    block tables itself, so it needs no `suffix_slots` (the PyTorch path's gathered suffixes)."""
    groups = find_groups(tables, [p // block_size for p in positions], min_blocks=min_blocks)
    prefix_len = [0] * len(tables)
    if not groups:
        return None, prefix_len
    offsets = torch.arange(block_size)
    members, prefix_slots, order = [], [], []
    for idx, shared in groups:
        blocks = torch.tensor(tables[idx[0]][:shared], dtype=torch.long)
        prefix_slots.append((blocks[:, None] * block_size + offsets).flatten().to(device))
        members.append(torch.tensor(idx, dtype=torch.long, device=device))
        for i in idx:
            prefix_len[i] = shared * block_size
        order.extend(idx)
    lengths = [positions[i] + 1 - prefix_len[i] for i in order]
    width = max(lengths) if suffix_slots else 0
    slots = torch.empty(len(order), width, dtype=torch.long)
    for row, i in enumerate(order if suffix_slots else []):
        start, stop = prefix_len[i], positions[i] + 1
        pos = torch.arange(start, stop)
        table = torch.tensor(tables[i], dtype=torch.long)
        real = table[pos // block_size] * block_size + pos % block_size
        slots[row, : len(real)] = real
        slots[row, len(real):] = real[0]  # padding reads a written slot: masked, but never NaN
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    mask = torch.zeros(valid.shape).masked_fill_(~valid, float("-inf"))
    starts = [0]
    for idx, _ in groups:
        starts.append(starts[-1] + len(idx))
    plan = SharedPrefixPlan(members, prefix_slots, torch.tensor(order, dtype=torch.long, device=device),
                            slots.to(device), mask.to(device),
                            lengths=torch.tensor([positions[i] + 1 for i in order], dtype=torch.int32),
                            group_starts=torch.tensor(starts, dtype=torch.int32),
                            prefix_blocks=torch.tensor([shared for _, shared in groups], dtype=torch.int32))
    return plan, prefix_len


def _grouped_queries(q: torch.Tensor, num_kv_heads: int, scale: float) -> torch.Tensor:
    """[N, H, D] -> scaled [KV, N * group, D]: each KV head's query heads stacked over the N sequences."""
    n, heads, d = q.shape
    group = heads // num_kv_heads
    return (q * scale).view(n, num_kv_heads, group, d).transpose(0, 1).reshape(num_kv_heads, n * group, d)


def _heads_back(x: torch.Tensor, n: int, num_kv_heads: int) -> torch.Tensor:
    """[KV, N * group, ...] -> [N, H, ...]."""
    group = x.shape[1] // n
    return x.view(num_kv_heads, n, group, *x.shape[2:]).transpose(0, 1).reshape(n, num_kv_heads * group,
                                                                                  *x.shape[2:])


def prefix_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked queries q [G, H, D] over one shared run of KV (non-causal). -> (out [G, H, D] fp32, lse [G, H])."""
    kv_heads = k_cache.shape[0]
    keys = k_cache.index_select(1, slots)  # [KV, P, D], read once for the whole group
    values = v_cache.index_select(1, slots)
    scores = torch.matmul(_grouped_queries(q, kv_heads, scale), keys.transpose(-1, -2)).float()
    lse = torch.logsumexp(scores, dim=-1)  # [KV, G * group]
    probs = torch.exp(scores - lse[..., None]).to(q.dtype)
    out = torch.matmul(probs, values).float()
    n = q.shape[0]
    return _heads_back(out, n, kv_heads), _heads_back(lse, n, kv_heads)


def suffix_lse(q: torch.Tensor, k_cache: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
               scale: float) -> torch.Tensor:
    """Log-sum-exp of each query's scores over its own suffix: q [N, H, D], slots/mask [N, Ls] -> [N, H]."""
    n, heads, d = q.shape
    kv_heads = k_cache.shape[0]
    group = heads // kv_heads
    keys = k_cache.index_select(1, slots.flatten()).view(kv_heads, n, -1, d)
    queries = (q * scale).view(n, kv_heads, group, d).transpose(0, 1)  # [KV, N, group, D]
    scores = torch.matmul(queries, keys.transpose(-1, -2)).float() + mask[None, :, None, :]
    return torch.logsumexp(scores, dim=-1).transpose(0, 1).reshape(n, heads)


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Softmax attention over [A | B] from its two halves' normalized outputs [N, H, D] and LSEs [N, H] (fp32)."""
    weight = torch.sigmoid(lse_a - lse_b)[..., None]
    return out_b + weight * (out_a - out_b)


def apply_shared_prefix(plan: SharedPrefixPlan, q: torch.Tensor, out: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, scale: float) -> None:
    """`out` holds each grouped query's attention over its suffix only; add the shared runs, in place."""
    tokens = plan.tokens
    q_grouped = q.index_select(0, tokens)
    lse_s = suffix_lse(q_grouped, k_cache, plan.suffix_slots, plan.suffix_mask, scale)
    parts_out, parts_lse = [], []
    for members, slots in zip(plan.members, plan.prefix_slots):
        o, lse = prefix_attention(q.index_select(0, members), k_cache, v_cache, slots, scale)
        parts_out.append(o)
        parts_lse.append(lse)
    out_p = parts_out[0] if len(parts_out) == 1 else torch.cat(parts_out)
    lse_p = parts_lse[0] if len(parts_lse) == 1 else torch.cat(parts_lse)
    merged = merge(out_p, lse_p, out.index_select(0, tokens).float(), lse_s)
    out.index_copy_(0, tokens, merged.to(out.dtype))
