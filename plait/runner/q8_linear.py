"""Linear layers that read their weights as exact Q8_0 int8 blocks (native/q8_gemm.c): fp32 layers at every step
size (Q8Linear), and a bf16 engine's LM head at steps of few rows (Q8HeadLinear).

GGUF files commonly store the token embedding, which is also the tied LM head, as Q8_0: 32 int8 values and one
fp16 scale per block. plait dequantizes it to fp32 at load, so every step reads the LM head at 4 bytes a weight
although the file's information is ~1.06 bytes a weight. For a large vocabulary that read dominates small steps
(Gemma 3 270M: the 262k x 640 head is 48% of a batch-1 step).

This module recovers the blocks from the fp32 weights and proves they are exact: a Q8_0 block written by llama.cpp
has d = amax / 127 and its largest element at +-127, so amax / 127 recovers the stored scale and w / d the stored
integers, and we check that d * q reproduces every weight bit for bit. A weight that does not round-trip (any
weight not from a Q8_0 tensor, e.g. after a weight update) keeps its plain Linear. Because the kernel rebuilds each
weight exactly and then sums like the few-rows fp32 kernel, its rows are bit-identical to that kernel's at any
step size: the LM head becomes batch-invariant as well as ~3x cheaper to read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plait.models.llama import Linear
from plait.runner.q8_vnni import BLOCK, TILE_N, pack_q8_vnni, q8_vnni_linear

_PROBE_ROWS = 64  # rows checked first, so weights that are not Q8_0 (most of them) are refused cheaply


def exact_q8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(int8 values [N, K], fp32 scales [N, K/32]) whose products are exactly `weight`, or None if there are none."""
    if weight.dtype != torch.float32 or weight.dim() != 2 or weight.shape[1] % BLOCK != 0:
        return None
    probe = _blocks_of(weight[:_PROBE_ROWS])
    if probe is None:
        return None
    return _blocks_of(weight)


def _blocks_of(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    rows, cols = weight.shape
    blocks = weight.detach().reshape(rows, cols // BLOCK, BLOCK)
    scales = blocks.abs().amax(dim=-1) / 127.0
    if not torch.equal(scales.half().float(), scales):  # Q8_0 scales are fp16
        return None
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    values = torch.round(blocks / safe.unsqueeze(-1))
    if values.abs().amax() > 127 or not torch.equal(values * scales.unsqueeze(-1), blocks):
        return None
    return values.to(torch.int8).reshape(rows, cols).contiguous(), scales.contiguous()


class Q8Linear(nn.Module):
    """A Linear whose forward reads the weight's exact int8 blocks. The dense weight stays (it is also the tied
    embedding, and `unwrap` gives it back), so this costs ~1/4 more memory for ~1/4 of the read per step."""

    def __init__(self, linear: Linear, values: torch.Tensor, scales: torch.Tensor, kernel) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.register_buffer("q8_values", values, persistent=False)
        self.register_buffer("q8_scales", scales, persistent=False)
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.empty(x2.shape[0], self.weight.shape[0], dtype=torch.float32)
        if x2.shape[0] == 0:
            return out.reshape(*lead, self.weight.shape[0])
        bias = self.bias.data_ptr() if self.bias is not None else None
        if self.kernel(x2.data_ptr(), self.q8_values.data_ptr(), self.q8_scales.data_ptr(), bias, out.data_ptr(),
                       x2.shape[0], self.weight.shape[0], self.weight.shape[1]) != 0:
            return F.linear(x, self.weight, self.bias)
        return out.reshape(*lead, self.weight.shape[0])

    def unwrap(self) -> Linear:
        linear = Linear(self.weight.shape[1], self.weight.shape[0], self.bias is not None, self.weight.dtype)
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def kernel_usable(kernels) -> bool:
    """The kernel exists and this CPU runs it (it refuses without AVX2 + FMA)."""
    fn = getattr(kernels, "q8_linear_f32", None)
    if fn is None:
        return False
    x, q, d, y = torch.zeros(1, BLOCK), torch.zeros(1, BLOCK, dtype=torch.int8), torch.ones(1, 1), torch.empty(1, 1)
    return fn(x.data_ptr(), q.data_ptr(), d.data_ptr(), None, y.data_ptr(), 1, 1, BLOCK) == 0


def wrap_q8_linears(model: nn.Module, kernels) -> int:
    """Swap every fp32 Linear whose weight is exactly Q8_0 blocks for a Q8Linear; returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear) and (blocks := exact_q8_blocks(child.weight)) is not None:
                setattr(parent, name, Q8Linear(child, *blocks, kernels.q8_linear_f32))
                swapped += 1
    return swapped


def unwrap_q8_linears(model: nn.Module) -> int:
    restored = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Q8Linear):
                setattr(parent, name, child.unwrap())
                restored += 1
    return restored


class Q8HeadLinear(nn.Module):
    """A bf16 engine's LM head over the GGUF's Q8_0 blocks (the file's exact values). Steps of at most `max_rows`
    rows run the fp32 x int8-weights kernel (~1.06 bytes a weight against bf16's 2); larger steps run plait's
    VNNI kernel where the CPU has AVX512-VNNI (`vnni`, native/q8_vnni.c: activations rounded to int8 per block of
    32, as llama.cpp's Q8_0 x Q8_0; 3x the fp32 kernel at one row, 1.3-2.5x oneDNN's bf16 GEMM at 4-64 rows), else
    the dense (prepacked) module. With `vnni` the transform sets max_rows = 0: every step takes the VNNI kernel and
    a row's logits do not depend on its step (batch-invariant). Otherwise they do (which kernel runs depends on
    the step's size), as on torch's 4-bit path. Logits are fp32 except on the dense path. When the VNNI kernel
    takes every step and the blocks are known to hold the dense weights exactly (a tied embedding checked row by
    row), `release_dense` drops the dense module; `dense_module` rebuilds it.
    """

    def __init__(self, dense: nn.Module, values: torch.Tensor, scales: torch.Tensor, kernel, max_rows: int,
                 vnni=None) -> None:
        super().__init__()
        self.dense = dense
        self.register_buffer("q8_values", values, persistent=False)
        self.register_buffer("q8_scales", scales, persistent=False)
        self.out_features, self.in_features = values.shape
        self.kernel, self.max_rows = kernel, max_rows
        self.vnni, self.vnni_packed = None, None
        if vnni is not None and self.out_features % TILE_N == 0 and self.in_features % BLOCK == 0:
            self.vnni, self.vnni_packed = vnni, pack_q8_vnni(values, scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows == 0 or x.device.type != "cpu":
            return self.dense_module()(x)
        if rows > self.max_rows:
            out = None
            if self.vnni is not None and x.dtype == torch.bfloat16:
                out = q8_vnni_linear(self.vnni, x.reshape(rows, self.in_features), self.vnni_packed,
                                     self.out_features)
            return self.dense_module()(x) if out is None else out.reshape(*x.shape[:-1], self.out_features)
        x2 = x.reshape(rows, self.in_features).float().contiguous()
        out = torch.empty(rows, self.out_features, dtype=torch.float32)
        if self.kernel(x2.data_ptr(), self.q8_values.data_ptr(), self.q8_scales.data_ptr(), None, out.data_ptr(),
                       rows, self.out_features, self.in_features) != 0:
            return self.dense_module()(x)
        return out.reshape(*x.shape[:-1], self.out_features)

    def release_dense(self) -> None:
        """Drop the dense module. Only for a head whose every step takes the VNNI kernel and whose dense weight is
        the blocks' values rounded to bf16, every row (the caller has checked)."""
        if self.vnni is None or self.max_rows != 0:
            raise ValueError("the dense head is still a fallback of this Q8HeadLinear")
        self.dense = None

    def dense_module(self) -> nn.Module:
        """The dense head: the one wrapped, or (released) a Linear rebuilt from the blocks with the same bits."""
        if self.dense is not None:
            return self.dense
        from plait.models.llama import Linear
        from plait.runner.q8_embedding import Q8Embedding

        # released only on the VNNI path, which is bf16's
        linear = Linear(0, 0, dtype=torch.bfloat16)
        linear.weight = nn.Parameter(Q8Embedding(self.q8_values, self.q8_scales, torch.bfloat16).table(),
                                     requires_grad=False)
        return linear


def dense_weight_rows(module: nn.Module, rows: slice) -> torch.Tensor:
    """Some rows of a plain or prepacked linear layer's weight."""
    if hasattr(module, "weight"):
        return module.weight[rows]
    return module.unpack().weight[rows]  # PackedLinear: read back exactly


def _head_rows(model: nn.Module, head: nn.Module, rows: slice) -> torch.Tensor:
    """Rows of the head's weight. A tied head is the embedding table, whose rows are a slice; reading a prepacked
    head back costs a GEMM over the whole matrix (measured: +244 MiB resident for the default model's head during
    loading, the peak of the whole load)."""
    table = getattr(model, "embed_tokens", None)
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if tied and isinstance(table, torch.Tensor) and table.numel() and getattr(model, "embed_lookup", None) is None:
        return table[rows]
    return dense_weight_rows(head, rows)


def attach_q8_head(model: nn.Module, blocks: tuple | None, kernel, max_rows: int = 2, vnni=None) -> int:
    """Wrap `model.lm_head` (a bias-free plain or prepacked linear) in a Q8HeadLinear reading `blocks` (the file's
    Q8_0 head, gguf_file.load_q8_head) when they are the head's weights: the dense bf16 rows must be the blocks'
    values rounded to bf16 (checked on a sample of rows, so a weight update's dense head is never paired with the
    file's old blocks). Returns 1 if wrapped, else 0."""
    head = getattr(model, "lm_head", None)
    if blocks is None or head is None or getattr(head, "bias", None) is not None:
        return 0
    values, scales = (torch.from_numpy(b) for b in blocks)
    shape = tuple(head.weight.shape) if hasattr(head, "weight") else (head.out_features, head.in_features)
    if tuple(values.shape) != shape:
        return 0
    rows = values.shape[0]
    for sample in (slice(0, _PROBE_ROWS), slice(rows // 2, rows // 2 + _PROBE_ROWS), slice(rows - _PROBE_ROWS, rows)):
        exact = (values[sample].float().reshape(-1, BLOCK) * scales[sample].reshape(-1, 1)).reshape(-1, values.shape[1])
        dense = _head_rows(model, head, sample)
        if not torch.equal(exact.to(dense.dtype), dense):
            return 0
    model.lm_head = Q8HeadLinear(head, values.contiguous(), scales.contiguous().float(), kernel, max_rows, vnni)
    return 1


def detach_q8_head(model: nn.Module) -> int:
    head = getattr(model, "lm_head", None)
    if isinstance(head, Q8HeadLinear):
        model.lm_head = head.dense_module()
        return 1
    return 0
