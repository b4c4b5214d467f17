"""Module surgery: linear layers read the GGUF's own 4-bit weights.

At batch 1 a decode step is bound by reading the weights: 4-bit blocks move a quarter of the bytes of bf16. Two
kernels read them:

* On AVX512-VNNI CPUs, plait's integer kernel (native/q4_vnni.c, runner/q4_vnni.py): activations quantized to
  int8 per block of 32 as llama.cpp's Q4 x Q8 dot products do, the file's codes and fp16 scales as stored. It
  reads the weights once per step at any row count and is faster than oneDNN's bf16 GEMM at every step size
  measured (1 to 512 rows), so it serves every step, and each row's arithmetic is independent of the step:
  batch-invariant.
* Elsewhere, torch's CPU int4 kernel, which computes (q - 8) * scale + zero per group of 32: exactly Q4_1's
  q * d + m with scale = d, zero = m + 8 d (Q4_0: zero = 0), scales rounded to bf16. It rebuilds bf16 weights per
  group of rows and is ~2.5x slower than oneDNN bf16 at 64 rows, so steps of more than 8 tokens use the dense
  weights, and a sequence's logits depend slightly on its step's size; `batch_invariant=True` leaves this kernel
  off (docs/batch_invariance.md).

`detach_q4` undoes the swap exactly. Torch's kernel needs its dense module for large steps and keeps it. The VNNI
kernel never falls back to it, so its Q4Linear drops the dense module when the packed blocks rebuild the same
weight bits (file-loaded weights: the loader's dequantization of the same blocks, checked before dropping), and
rebuilds it on `detach_q4`: one copy of each weight (212 MB less for SmolLM2-135M). Weights quantized from new
dense weights after an update cannot be rebuilt from their blocks, so their dense module stays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from plait.loading.gguf_file import Q4Blocks
from plait.models.llama import Linear
from plait.runner.q4_vnni import dequantize_q4_vnni, pack_q4_vnni, q4_vnni_linear

# Steps of at most this many tokens take torch's int4 kernel; the VNNI kernel takes every step.
TORCH_INT4_MAX_ROWS = 8
ALL_ROWS = 1 << 62


class Q4Linear(nn.Module):
    """`kernel`: the native VNNI entry point (Kernels.q4_vnni_linear_bf16), or None for torch's int4 kernel;
    `dequantize`: with it, Kernels.q4_vnni_dequantize_bf16 (what lets `release_dense` drop the dense module).
    `max_rows`: steps with more tokens use the dense module (None: the kernel's own default)."""

    def __init__(self, dense: nn.Module, blocks: Q4Blocks, max_rows: int | None = None, kernel=None,
                 dequantize=None) -> None:
        super().__init__()
        self.dense: nn.Module | None = dense
        self.kernel = kernel
        self.dequantize = dequantize
        self.max_rows = max_rows if max_rows is not None else (ALL_ROWS if kernel else TORCH_INT4_MAX_ROWS)
        self.bias = getattr(dense, "bias", None)
        self.out_features, self.in_features = blocks.q.shape
        if kernel is not None:
            self.packed = pack_q4_vnni(blocks)
            self.scales_zeros = None
            return
        self.packed = torch._convert_weight_to_int4pack_for_cpu(torch.from_numpy(blocks.q.astype(np.int32)), 2)
        scales_zeros = torch.stack([torch.from_numpy(blocks.scale).t(), torch.from_numpy(blocks.zero).t()], -1)
        self.scales_zeros = scales_zeros.to(torch.bfloat16).contiguous()  # [in / 32, out, 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._four_bit(x) if x.shape[0] <= self.max_rows else None
        if out is None:  # a large step on torch's kernel, or the VNNI kernel could not allocate its buffer
            return self.dense_module()(x)
        return out if self.bias is None else out + self.bias

    def release_dense(self) -> bool:
        """Drop the dense module if the VNNI kernel takes every step and the packed blocks rebuild its weight bit
        for bit; True when no dense module is held afterwards."""
        if self.dense is None:
            return True
        if (not self.batch_invariant or self.dequantize is None or type(self.dense) is not Linear
                or self.dense.weight.dtype != torch.bfloat16):
            return False
        rebuilt = dequantize_q4_vnni(self.dequantize, self.packed, self.out_features, self.in_features)
        if rebuilt is None or not torch.equal(rebuilt, self.dense.weight):
            return False  # e.g. blocks quantized from other weights, or a minimum that fp16 did not round-trip
        self.dense = None
        return True

    def dense_module(self) -> nn.Module:
        """The dense module: the one wrapped, or (released) a Linear rebuilt with the same weight bits."""
        if self.dense is not None:
            return self.dense
        weight = dequantize_q4_vnni(self.dequantize, self.packed, self.out_features, self.in_features)
        if weight is None:
            raise RuntimeError("the packed 4-bit weights could not be dequantized")
        linear = Linear(0, 0, dtype=torch.bfloat16)
        linear.weight = nn.Parameter(weight, requires_grad=False)
        linear.bias = self.bias
        return linear

    def _four_bit(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.kernel is not None:
            return q4_vnni_linear(self.kernel, x, self.packed, self.out_features)
        return torch._weight_int4pack_mm_for_cpu(x.contiguous(), self.packed, Q4Blocks.GROUP, self.scales_zeros)

    @property
    def batch_invariant(self) -> bool:
        """True when every step takes the same kernel, whose rows do not depend on the step."""
        return self.kernel is not None and self.max_rows >= ALL_ROWS


def fuse(parts: list[Q4Blocks]) -> Q4Blocks:
    """Stack the rows of several matrices (as the model fuses q/k/v and gate/up)."""
    return Q4Blocks(np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]),
                    np.concatenate([p.zero for p in parts]))


def shape_supported(blocks: Q4Blocks) -> bool:
    """The CPU int4 kernel packs output rows in 16s and reads the input in groups of 32."""
    rows, cols = blocks.q.shape
    return rows % 16 == 0 and cols % Q4Blocks.GROUP == 0


def can_use_q4(dtype: torch.dtype, device: torch.device) -> bool:
    return device.type == "cpu" and dtype == torch.bfloat16 and hasattr(torch, "_weight_int4pack_mm_for_cpu")


def attach_q4(model: nn.Module, blocks: dict[str, Q4Blocks], kernel=None, dequantize=None) -> int:
    """Wrap every linear layer whose checkpoint matrices are all 4-bit; returns how many were wrapped. With
    `dequantize` (VNNI) each wrapper drops its dense module where the blocks rebuild it exactly."""
    wrapped = 0
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        sources = {"qkv_proj": [p + f"self_attn.{n}_proj.weight" for n in "qkv"],
                   "o_proj": [p + "self_attn.o_proj.weight"],
                   "gate_up_proj": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
                   "down_proj": [p + "mlp.down_proj.weight"]}
        for attr, names in sources.items():
            if all(n in blocks for n in names):
                fused = fuse([blocks[n] for n in names])
                if shape_supported(fused):
                    q4 = Q4Linear(getattr(layer, attr), fused, kernel=kernel, dequantize=dequantize)
                    q4.release_dense()
                    setattr(layer, attr, q4)
                    wrapped += 1
    head = blocks.get("lm_head.weight")
    if head is not None and not model.config.tie_word_embeddings and shape_supported(head):
        model.lm_head = Q4Linear(model.lm_head, blocks["lm_head.weight"], kernel=kernel, dequantize=dequantize)
        model.lm_head.release_dense()
        wrapped += 1
    return wrapped


def detach_q4(model: nn.Module) -> int:
    """Undo `attach_q4`: every Q4Linear becomes the dense module it wrapped; returns how many."""
    restored = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Q4Linear):
                setattr(parent, name, child.dense_module())
                restored += 1
    return restored


def wrapped_q4(model: nn.Module) -> list[str]:
    """Names of the modules `attach_q4` wrapped (what `requantize_q4` wraps again after new weights)."""
    return [name for name, module in model.named_modules() if isinstance(module, Q4Linear)]


def requantize_q4(model: nn.Module, names: list[str], kernel=None, dequantize=None) -> int:
    """Wrap the named (dense) modules again, with 4-bit blocks quantized from their current weights; returns how
    many. Fused q/k/v and gate/up quantize as one matrix: groups run along the input, so stacking rows commutes
    with quantizing."""
    from plait.runner.q4_quantize import dense_weight, quantize_q4

    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        dense = getattr(parent, attr)
        setattr(parent, attr, Q4Linear(dense, quantize_q4(dense_weight(dense)), kernel=kernel, dequantize=dequantize))
    return len(names)


def rewrap_q4(model: nn.Module, previous: dict[str, Q4Linear]) -> int:
    """Put back Q4Linears whose weights an update did not change (their blocks are still right) around the
    current dense modules; returns how many. Saves re-quantizing a whole model for a partial update."""
    for name, q4 in previous.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        q4.dense = getattr(parent, attr)
        q4.bias = getattr(q4.dense, "bias", None)
        q4.release_dense()  # the module detach_q4 rebuilt from these blocks, or the original
        setattr(parent, attr, q4)
    return len(previous)

