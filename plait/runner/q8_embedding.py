"""A tied token embedding read from the LM head's Q8_0 blocks, so a bf16 engine keeps one copy of that matrix.

With the Q8 head attached (runner/q8_linear.py, Q8HeadLinear) a bf16 engine on a GGUF holds the embedding matrix
three times: the bf16 embedding table, the prepacked bf16 head for large steps, and the head's int8 blocks. When the
embedding is tied to the head, the table is the blocks' values rounded to bf16, so a lookup can dequantize the few
rows a step asks for from the blocks instead: the same bits (checked on every row before the table is dropped), and
the table's memory (54 MiB for SmolLM2-135M, 316 MiB for Gemma 3 270M) goes back to the OS. The check costs
0.14 s of a 1.9 s build for SmolLM2, 0.39 s of 6.3 s for Gemma 3 (2 threads). Reverting rebuilds the
table exactly.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK = 32
_CHECK_ROWS = 8192  # rows dequantized at a time when checking or rebuilding: bounded temporary memory


class Q8Embedding(nn.Module):
    """Rows of a [vocab, hidden] table given as int8 values and one fp32 scale per 32 values, in `dtype`."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.values, self.scales, self.dtype = values, scales, dtype  # the head's buffers, not copies

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        values, scales = self.values[flat], self.scales[flat]
        hidden = values.shape[1]
        dense = (values.reshape(-1, hidden // BLOCK, BLOCK).float() * scales.unsqueeze(-1)).reshape(-1, hidden)
        return dense.to(self.dtype).reshape(*ids.shape, hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids)

    def table(self) -> torch.Tensor:
        """The whole dense table, rebuilt exactly."""
        out = torch.empty(self.values.shape, dtype=self.dtype)
        for ids in _row_chunks(out.shape[0]):
            out[ids[0]:ids[-1] + 1] = self.rows(ids)
        return out


def _row_chunks(rows: int):
    """Consecutive row ids, _CHECK_ROWS at a time."""
    for start in range(0, rows, _CHECK_ROWS):
        yield torch.arange(start, min(start + _CHECK_ROWS, rows))


def attach_q8_embedding(model: nn.Module, values: torch.Tensor, scales: torch.Tensor) -> int:
    """Read `model.embed_tokens` through the blocks when every row equals them (a tied embedding); free the dense
    table. Returns 1 if attached, else 0."""
    table = getattr(model, "embed_tokens", None)
    if (not isinstance(table, torch.Tensor) or getattr(model, "embed_lookup", False) is not None
            or tuple(table.shape) != tuple(values.shape)):
        return 0
    lookup = Q8Embedding(values, scales, table.dtype)
    for ids in _row_chunks(table.shape[0]):
        if not torch.equal(lookup.rows(ids), table[ids[0]:ids[-1] + 1]):
            return 0  # an untied embedding, or weights no longer the file's
    model.embed_lookup = lookup
    model.embed_tokens.data = torch.empty(0, dtype=table.dtype)  # the only other reference is gone with this
    return 1


def detach_q8_embedding(model: nn.Module) -> int:
    lookup = getattr(model, "embed_lookup", None)
    if not isinstance(lookup, Q8Embedding):
        return 0
    model.embed_tokens.data = lookup.table()
    model.embed_lookup = None
    return 1
