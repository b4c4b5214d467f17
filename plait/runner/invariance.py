"""What `batch_invariant=True` needs, checked once when the engine is built.

A request's logits are bitwise the same whatever else is in its step only when every op computes each row with
the same arithmetic at any row count. Measured per op (tests/runner/test_batch_invariance.py):

* linear layers: oneDNN prepacked (fp32 and bf16, a lone row computed as two: oneDNN's single-row kernel differs
  with AVX-512) and plain bf16 `F.linear` are row-invariant; MKL's fp32
  `F.linear` is not (it picks kernels by row count), and the 4-bit path switches weights at 8 rows. The weight
  transforms (runner/weight_transforms.py) pack fp32 linears and leave the 4-bit path off in this mode.
* attention: plait's C kernel computes each (token, kv head) alone, over its own context in cache order, so a
  token gets the same bits alone, in a batch, inside a prompt chunk or as a decode. The PyTorch fallback pads
  decodes to the batch's longest context and runs prompts through SDPA, so it is refused here.
* RMSNorm, SiLU * up, RoPE, the embedding and the sampler work row by row (the sampler's seeded rows draw from
  their own generators).

CUDA is refused: cuBLAS and SDPA choose kernels (and split-K reductions) by shape.
"""

from __future__ import annotations

import torch
from torch import nn

from plait.models.llama import Linear
from plait.runner.native import Kernels


def check_batch_invariant(model: nn.Module, dtype: torch.dtype, device: torch.device,
                          kernels: Kernels | None) -> None:
    """Raise ValueError naming `batch_invariant` when this engine cannot keep the promise."""
    if device.type != "cpu":
        raise ValueError(f"batch_invariant=True is supported on the CPU only, got device {device.type!r}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"batch_invariant=True needs dtype float32 or bfloat16, got {dtype}")
    if kernels is None:
        raise ValueError("batch_invariant=True needs plait's C attention kernel (native_kernels=True and a C "
                         "compiler); the PyTorch attention path is not batch-invariant")
    if dtype == torch.float32 and any(isinstance(m, Linear) for m in model.modules()):
        raise ValueError("batch_invariant=True in float32 needs oneDNN (torch.backends.mkldnn) to prepack the "
                         "linear layers; MKL's F.linear is not batch-invariant")
