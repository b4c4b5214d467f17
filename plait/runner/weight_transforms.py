"""Weight transforms: the module surgery the builder applies after loading, as one ordered list.

Each transform swaps some of the model's modules for faster ones (prepacked oneDNN weights, the GGUF's own 4-bit
blocks) and can undo the swap exactly, putting back plain modules under the names `model.load_weights` fills.
So a later feature that changes weights (a weight update, a new quantization) does: `revert_transforms`, load the
new weights by their checkpoint names, `apply_transforms` again; no special case per transform in builder.py.

Order matters and is fixed here: fp32 weights that are exact Q8_0 blocks first (the LM head of GGUF files; they
must be found before packing hides the dense Linear), then the 4-bit path through plait's VNNI kernel (it needs no
dense fallback, so it wraps the plain Linear and drops it where its blocks rebuild the weight exactly: packing it
would only cost memory), then packing (it turns every other dense Linear into a PackedLinear), then the 4-bit
path through torch's int4 kernel (which wraps the packed module as its large-step fallback), then fp32's few-rows
kernel (on whatever dense Linears are left). Reverting runs the list backwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plait.runner.packed_linear import PackedLinear, can_pack, pack_linears, unpack_linears
from plait.runner.q4_linear import (Q4Linear, attach_q4, can_use_q4, detach_q4, requantize_q4, rewrap_q4,
                                    wrapped_q4)


@dataclass(frozen=True)
class TransformContext:
    """What a transform may look at to decide whether it applies."""

    dtype: torch.dtype
    device: torch.device
    source: str | None = None  # the checkpoint the weights came from (a .gguf path, an HF dir), None in tests
    batch_invariant: bool = False  # every row of a step must get the same arithmetic whatever the step's size
    native_kernels: bool = False  # plait's C kernels may be used (EngineConfig.native_kernels)
    requantize: bool = False  # re-applying after a weight update: quantize the new weights, not the file's
    changed: frozenset[str] | None = None  # with requantize: the parameters the update changed (None: all)
    # The GGUF whose LM-head blocks the model's head still holds (at load: `source`; after an update that left the
    # head alone: the file it came from; None once the head may differ from every file).
    head_source: str | None = None


class WeightTransform:
    """One module swap. `apply` returns how many modules it swapped (0: nothing to do here), `revert` undoes
    every swap it made, leaving modules that hold the same dense weights as before `apply`."""

    name = "transform"

    def applies(self, ctx: TransformContext) -> bool:
        raise NotImplementedError

    def apply(self, model: nn.Module, ctx: TransformContext) -> int:
        raise NotImplementedError

    def revert(self, model: nn.Module, only: set[str] | None = None) -> int:
        """Undo `apply`. `only`: the qualified names of the modules whose weights are about to change (None: all);
        a transform may leave the others as they are, provided `apply` then accepts the model as it left it."""
        raise NotImplementedError


class Q8Weights(WeightTransform):
    """fp32 Linears whose weights are exactly Q8_0 blocks (a GGUF's Q8_0 LM head) read those int8 blocks
    (runner/q8_linear.py). Bit-identical to the few-rows fp32 kernel at every step size, so it is batch-invariant
    and applies under batch-invariant numerics too. Weights that are not exact Q8_0 are left alone."""

    name = "q8"

    def applies(self, ctx: TransformContext) -> bool:
        if ctx.dtype != torch.float32 or ctx.device.type != "cpu" or not ctx.native_kernels:
            return False
        from plait.runner.native import load_kernels
        from plait.runner.q8_linear import kernel_usable

        return kernel_usable(load_kernels())

    def apply(self, model: nn.Module, ctx: TransformContext) -> int:
        from plait.runner.native import load_kernels
        from plait.runner.q8_linear import wrap_q8_linears

        return wrap_q8_linears(model, load_kernels())

    def revert(self, model: nn.Module, only: set[str] | None = None) -> int:
        from plait.runner.q8_linear import unwrap_q8_linears

        return unwrap_q8_linears(model)


class PackWeights(WeightTransform):
    """Every Linear through oneDNN with its weight prepacked (runner/packed_linear.py)."""

    name = "packed"

    def applies(self, ctx: TransformContext) -> bool:
        return can_pack(ctx.dtype, ctx.device, ctx.batch_invariant)

    def apply(self, model: nn.Module, ctx: TransformContext) -> int:
        return pack_linears(model, ctx.batch_invariant)

    def revert(self, model: nn.Module, only: set[str] | None = None) -> int:
        return unpack_linears(model, only)


class Q8HeadWeights(WeightTransform):
    """A bf16 engine on a GGUF whose LM head is Q8_0 (both shipped models) reads the head's int8 blocks
    (runner/q8_linear.py, Q8HeadLinear) instead of a bf16 copy: on AVX512-VNNI CPUs at every step through the
    int8 kernel (native/q8_vnni.c; batch-invariant, so also under batch-invariant numerics); elsewhere at steps of
    at most 2 rows through the fp32 x int8-weights kernel, larger steps keeping oneDNN's bf16 GEMM (not under
    batch-invariant numerics: a row's logits then depend on its step's size). Applied after packing (it wraps the
    packed head). A tied embedding then reads its rows from the same blocks (runner/q8_embedding.py), so the bf16
    table is not kept beside them. After a weight update it applies while the head is still a GGUF file's: an
    update from a GGUF file, or a partial update that did not write the head."""

    name = "q8_head"
    max_rows = 2  # measured (plait bench lm-head, AVX-512 EPYC): the fp32 x int8 kernel wins at 1-2 rows, oneDNN from 4

    @staticmethod
    def _kernels(ctx: TransformContext):
        from plait.runner.native import load_kernels

        return load_kernels() if ctx.native_kernels else None

    def applies(self, ctx: TransformContext) -> bool:
        if (ctx.dtype != torch.bfloat16 or ctx.device.type != "cpu" or not ctx.native_kernels
                or ctx.head_source is None or not ctx.head_source.endswith(".gguf")):
            return False
        from plait.runner.q8_linear import kernel_usable

        kernels = self._kernels(ctx)
        if ctx.batch_invariant and (kernels is None or kernels.q8_vnni_linear_bf16 is None):
            return False
        return kernel_usable(kernels)

    def apply(self, model: nn.Module, ctx: TransformContext) -> int:
        from plait.loading.gguf_file import load_q8_head
        from plait.runner.q8_embedding import attach_q8_embedding
        from plait.runner.q8_linear import Q8HeadLinear, attach_q8_head, detach_q8_head

        if isinstance(model.lm_head, Q8HeadLinear):  # kept through a partial update that wrote neither matrix
            return 1 + (getattr(model, "embed_lookup", None) is not None)
        kernels = self._kernels(ctx)
        if not attach_q8_head(model, load_q8_head(ctx.head_source), kernels.q8_linear_f32, self.max_rows,
                              kernels.q8_vnni_linear_bf16):
            return 0
        if model.lm_head.vnni is not None:
            model.lm_head.max_rows = 0  # one kernel at every step size: batch-invariant
        elif ctx.batch_invariant:  # the head's shape does not tile for the VNNI kernel
            detach_q8_head(model)
            return 0
        # A tied embedding is the same matrix: read its rows from the head's blocks and drop the bf16 table.
        embedded = attach_q8_embedding(model, model.lm_head.q8_values, model.lm_head.q8_scales)
        if embedded and model.lm_head.max_rows == 0 and getattr(model.config, "tie_word_embeddings", False):
            # Every row of that matrix was just checked against the blocks, and every step reads the blocks: the
            # dense (prepacked) head is a third copy of them.
            model.lm_head.release_dense()
        return 1 + embedded

    def revert(self, model: nn.Module, only: set[str] | None = None) -> int:
        from plait.runner.q8_embedding import detach_q8_embedding
        from plait.runner.q8_linear import detach_q8_head

        if only is not None and not only & {"lm_head", ""}:  # "": the root module, which owns embed_tokens
            return 0
        return detach_q8_embedding(model) + detach_q8_head(model)


class Q4Weights(WeightTransform):
    """Steps read the GGUF's 4-bit blocks (runner/q4_linear.py). Two instances, one per kernel: `vnni=True`, plait's
    VNNI kernel at every step size where the CPU has AVX512-VNNI and the native kernels are on (batch-invariant, so
    also under batch-invariant numerics; applied before packing, keeping no dense copy where the blocks rebuild
    it); `vnni=False`, torch's int4 kernel at steps of few tokens elsewhere (its numerics depend on the step's size,
    so never under batch-invariant numerics; applied after packing). It remembers which modules it wrapped:
    re-applied with `requantize` (after a weight update from a state dict, when the file's blocks are the old
    weights), it wraps the same modules with blocks quantized from their new dense weights
    (runner/q4_quantize.py); re-applied with a GGUF source (an update from a file), it reads that file's blocks."""

    def __init__(self, vnni: bool = False) -> None:
        self.vnni = vnni
        self.name = "q4_vnni" if vnni else "q4"
        self.wrapped: list[str] = []
        self.previous: dict[str, Q4Linear] = {}  # between revert and re-apply: reused where weights did not change

    @staticmethod
    def _kernels(ctx: TransformContext):
        """The native kernels when this engine may use the VNNI one, else None."""
        if not ctx.native_kernels or ctx.dtype != torch.bfloat16 or ctx.device.type != "cpu":
            return None
        from plait.runner.native import load_kernels

        kernels = load_kernels()
        return kernels if kernels is not None and kernels.q4_vnni_linear_bf16 is not None else None

    def applies(self, ctx: TransformContext) -> bool:
        if not can_use_q4(ctx.dtype, ctx.device) or (self._kernels(ctx) is not None) != self.vnni:
            return False
        if ctx.batch_invariant and not self.vnni:
            return False
        if ctx.requantize:
            return bool(self.wrapped)
        return ctx.source is not None and ctx.source.endswith(".gguf")

    def apply(self, model: nn.Module, ctx: TransformContext) -> int:
        kernels = self._kernels(ctx)
        kernel = kernels.q4_vnni_linear_bf16 if kernels is not None else None
        dequantize = kernels.q4_vnni_dequantize_bf16 if kernels is not None else None
        if ctx.requantize:
            previous, self.previous = self.previous, {}
            if ctx.changed is None:
                return requantize_q4(model, self.wrapped, kernel=kernel, dequantize=dequantize)
            stale = [n for n in self.wrapped if n not in previous or any(p.startswith(n + ".") for p in ctx.changed)]
            return (requantize_q4(model, stale, kernel=kernel, dequantize=dequantize)
                    + rewrap_q4(model, {n: previous[n] for n in self.wrapped if n not in stale}))
        from plait.loading.gguf_file import load_q4_blocks

        self.previous = {}
        count = attach_q4(model, load_q4_blocks(ctx.source), kernel=kernel, dequantize=dequantize)
        self.wrapped = wrapped_q4(model)
        return count

    def revert(self, model: nn.Module, only: set[str] | None = None) -> int:
        self.previous = {n: m for n, m in model.named_modules() if isinstance(m, Q4Linear)}
        restored = detach_q4(model)
        if self.vnni:  # applied before packing: put back plain Linears (a kept dense module was packed since)
            for name in self.previous:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                if isinstance(getattr(parent, attr), PackedLinear):
                    setattr(parent, attr, getattr(parent, attr).unpack())
        return restored


class SmallBatchWeights(WeightTransform):
    """fp32 steps of up to 16 rows through plait's few-rows kernel (runner/small_linear.py). Its rows match MKL's
    only to rounding and it switches to MKL above 16 rows, so not under batch-invariant numerics."""

    name = "small_batch"

    def applies(self, ctx: TransformContext) -> bool:
        if ctx.batch_invariant or ctx.dtype != torch.float32 or ctx.device.type != "cpu" or not ctx.native_kernels:
            return False
        from plait.runner.native import load_kernels
        from plait.runner.small_linear import kernel_usable

        return kernel_usable(load_kernels())

    def apply(self, model: nn.Module, ctx: TransformContext) -> int:
        from plait.runner.native import load_kernels
        from plait.runner.small_linear import wrap_linears

        return wrap_linears(model, load_kernels())

    def revert(self, model: nn.Module, only: set[str] | None = None) -> int:
        from plait.runner.small_linear import unwrap_linears

        return unwrap_linears(model)


def default_transforms(packed_weights: bool = True, native_q4: bool = True, small_batch: bool = True,
                       exact_q8: bool = True) -> list[WeightTransform]:
    """The ordered list the builder applies (each still checks `applies` against the context)."""
    transforms: list[WeightTransform] = []
    if exact_q8:
        transforms.append(Q8Weights())
    if native_q4:
        transforms.append(Q4Weights(vnni=True))
    if packed_weights:
        transforms.append(PackWeights())
    if exact_q8:
        transforms.append(Q8HeadWeights())
    if native_q4:
        transforms.append(Q4Weights())
    if small_batch:
        transforms.append(SmallBatchWeights())
    return transforms


def apply_transforms(model: nn.Module, transforms: list[WeightTransform],
                     ctx: TransformContext) -> list[WeightTransform]:
    """Apply, in order, every transform that applies and swaps something; returns those, for `revert_transforms`."""
    applied = []
    for transform in transforms:
        if transform.applies(ctx) and transform.apply(model, ctx):
            applied.append(transform)
    return applied


def revert_transforms(model: nn.Module, applied: list[WeightTransform], only: set[str] | None = None) -> None:
    """Undo `apply_transforms`, last first: the model holds plain modules with the weights it was loaded with (with
    `only`, at least the modules it names; see WeightTransform.revert)."""
    for transform in reversed(applied):
        transform.revert(model, only)
