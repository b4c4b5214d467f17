"""A whole Llama decoder layer in one native call (native/decoder_layer.c), where its parts allow it.

At batch 1 the kernels of a layer take a few microseconds each and reaching each from Python costs about as much
(module call, checks, output allocation, ctypes): a batch-1 step spent ~270 us per layer. The fused call runs the
same kernels in the same order on the same inputs, so its outputs are bit-identical to the module-by-module path.

That path stays the reference and the fallback: `FusedLlamaLayer` looks at the layer's modules on every call (a
weight update may have swapped them) and declines (returns None) unless all four projections are the VNNI 4-bit
kernel without biases, the norms / activation / RoPE are the native modules, the layer has no q/k norms, and the
step's attention is the plain paged kernel (no shared-prefix merge, no window).
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from plait.runner.native import Kernels, LayerArgs
from plait.runner.native.modules import NativeRMSNorm, NativeRope, NativeSiluAndMul
from plait.runner.q4_linear import Q4Linear


class FusedLlamaLayer:
    """The `fused_forward` of one Llama DecoderLayer (plait/models/llama.py). Not a module: it holds no weights,
    only reads the layer's at call time."""

    def __init__(self, kernels: Kernels) -> None:
        self.fn = kernels.llama_layer_bf16
        self.args = LayerArgs()
        self.args_ref = ctypes.byref(self.args)

    def __call__(self, layer: nn.Module, hidden: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor,
                 sin: torch.Tensor, attention) -> tuple[torch.Tensor, torch.Tensor] | None:
        step = getattr(attention, "kernel_step", None)
        if (step is None or attention.shared_step is not None or attention.meta.shared_prefix is not None
                or not _servable(layer) or hidden.dtype != torch.bfloat16 or cos.dtype != torch.bfloat16
                or not (hidden.is_contiguous() and cos.is_contiguous() and sin.is_contiguous())
                or (residual is not None and not residual.is_contiguous())):
            return None
        tokens, hidden_size = hidden.shape
        if tokens != step.tokens:
            return None
        cache = attention.cache.tensor
        att = step.for_fused_layer(cache[layer.index, 0], cache[layer.index, 1])
        out = torch.empty_like(hidden)
        residual_out = torch.empty_like(hidden)
        a = self.args
        a.hidden, a.residual = hidden.data_ptr(), None if residual is None else residual.data_ptr()
        a.residual_out, a.out = residual_out.data_ptr(), out.data_ptr()
        a.input_norm = layer.input_layernorm.weight.data_ptr()
        a.post_norm = layer.post_attention_layernorm.weight.data_ptr()
        a.qkv_w, a.o_w = layer.qkv_proj.packed.data_ptr(), layer.o_proj.packed.data_ptr()
        a.gate_up_w, a.down_w = layer.gate_up_proj.packed.data_ptr(), layer.down_proj.packed.data_ptr()
        a.cos, a.signed_sin = cos.data_ptr(), sin.data_ptr()
        a.tokens, a.hidden_size, a.intermediate_size = tokens, hidden_size, layer.gate_up_proj.out_features // 2
        a.heads, a.kv_heads, a.head_dim = layer.num_heads, layer.num_kv_heads, layer.head_dim
        a.eps = layer.input_layernorm.eps
        if self.fn(self.args_ref, att) != 0:
            return None  # a refused shape or a failed allocation: the module path reruns the layer from its inputs
        return out, residual_out


def _servable(layer: nn.Module) -> bool:
    projections = (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)
    # batch_invariant: the VNNI kernel serves every step size, as the module path then does too
    return (all(type(p) is Q4Linear and p.batch_invariant and p.bias is None for p in projections)
            and layer.q_norm is None and type(layer.input_layernorm) is NativeRMSNorm
            and type(layer.post_attention_layernorm) is NativeRMSNorm and type(layer.act) is NativeSiluAndMul
            and type(layer.rope) is NativeRope
            and layer.input_layernorm.eps == layer.post_attention_layernorm.eps)


def use_fused_layers(model: nn.Module, kernels: Kernels) -> int:
    """Give every Llama decoder layer of `model` a fused forward where the CPU has the kernel; returns how many."""
    if kernels.llama_layer_bf16 is None:
        return 0
    fused = 0
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "fused_forward"):
            layer.fused_forward = FusedLlamaLayer(kernels)
            fused += 1
    return fused
