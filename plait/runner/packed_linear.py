"""Module surgery: on CPU, run every Linear through oneDNN with its weight reordered once at load.

Plain `F.linear` re-lays out the weight for oneDNN on every call; prepacking halves batch-1 matmul time in bf16
(the lm_head 9.3 -> 3.3 ms on one core) and gives bit-identical bf16 results. The model code never knows.

In fp32 plain `F.linear` goes to MKL, which picks a different kernel by row count (a row computed alone differs
from the same row inside 2, 4 or 16 rows by ~1e-6), so fp32 is packed only when batch-invariant numerics are asked
for: oneDNN's fp32 prepacked matmul gives every row the same bits at any row count (measured M = 1..129 on all of
SmolLM2's shapes; tests/runner/test_batch_invariance.py keeps checking it).

Packing is reversible exactly: `unpack_linears` multiplies the packed weight by the identity (one nonzero term per
output, so no rounding) and puts plain `Linear`s back under their names, ready for new weights.
"""

from __future__ import annotations

import torch
from torch import nn

from plait.models.llama import Linear


class PackedLinear(nn.Module):
    def __init__(self, linear: Linear, batch_invariant: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        self.dtype = linear.weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias
        # With AVX-512, oneDNN takes another kernel for a single row at some shapes (SmolLM2's down projection,
        # K = 1536, fp32 and bf16: a row alone can differ from the same row among 2+ rows in the last bit). For
        # batch invariance a lone row is computed as two (itself twice) and gets the many-row bits. fp32 is packed
        # only for batch invariance.
        self.pad_single_row = batch_invariant or self.dtype == torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if self.pad_single_row and x.numel() == self.in_features:
            rows = x.reshape(1, self.in_features).expand(2, -1).contiguous()
            out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
            return out[:1].reshape(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def unpack(self) -> Linear:
        """The plain Linear this was built from, with the same weight bits."""
        linear = Linear(self.in_features, self.out_features, self.bias is not None, self.dtype)
        eye = torch.eye(self.in_features, dtype=self.dtype)
        with torch.inference_mode():
            weight_t = torch.ops.mkldnn._linear_pointwise(eye, self.packed, None, "none", [], "")
        linear.weight.data = weight_t.t().contiguous().clone()
        linear.bias = self.bias
        return linear


def can_pack(dtype: torch.dtype, device: torch.device, batch_invariant: bool = False) -> bool:
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float32 and batch_invariant


def pack_linears(model: nn.Module, batch_invariant: bool = False) -> int:
    """Swap every Linear of `model` for a PackedLinear; returns how many PackedLinears the model then has (some
    may have stayed packed through a partial `unpack_linears`)."""
    packed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear):
                setattr(parent, name, PackedLinear(child, batch_invariant))
            packed += isinstance(getattr(parent, name), PackedLinear)
    return packed


def unpack_linears(model: nn.Module, only: set[str] | None = None) -> int:
    """Undo `pack_linears`: every PackedLinear (or those named in `only`, qualified module names, for an update of
    a few weights: reading a packed weight back costs a GEMM) becomes the plain Linear it was; returns how many."""
    restored = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, PackedLinear) and (only is None or qualified in only):
                setattr(parent, name, child.unpack())
                restored += 1
    return restored
