"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3) over a packed, unpadded token batch.

The model sees only `input_ids[T]`, `positions[T]` and an `attention` callable that knows where each request's
tokens begin and end and where its KV lives. It never sees the scheduler or the cache layout.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from plait.config import ModelConfig
from plait.models.layers import RMSNorm, Rope, RotaryEmbedding, SiluAndMul
from plait.models.slots import Slot, fused


class Attention(Protocol):
    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, heads, d], k/v: [T, kv_heads, d] (RoPE applied) -> attention output [T, heads, d].
        Stores k/v in the KV cache as a side effect."""
        ...


class Linear(nn.Module):
    """A bias-optional linear layer whose matmul can be swapped (e.g. prepacked oneDNN) without touching models."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.index = index
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.split = (q_size, kv_size, kv_size)
        # q, k and v in one matmul; gate and up in another: fewer, larger ops per step.
        self.qkv_proj = Linear(cfg.hidden_size, sum(self.split), cfg.attention_bias, dtype)
        self.o_proj = Linear(q_size, cfg.hidden_size, dtype=dtype)
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, dtype=dtype)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, dtype=dtype)
        self.act = SiluAndMul()
        self.rope = Rope()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        # A runner may set a native version of this whole layer (runner/fused_layer.py): called with the layer and
        # forward's arguments, it returns forward's result, or None when it cannot serve the call; the modules
        # below are then run as they are. They stay the reference its results are checked against.
        self.fused_forward = None

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                attention: Attention) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: the previous layer's MLP output (the embeddings for the first layer); residual: the residual
        stream before it (None for the first layer). Returns this layer's MLP output and the residual stream; the
        next norm adds them, so each residual add and the norm after it are one op (fused on CPU, runner/native)."""
        if self.fused_forward is not None:
            result = self.fused_forward(self, hidden, residual, cos, sin, attention)
            if result is not None:
                return result
        T = hidden.shape[0]
        if residual is None:
            h, residual = self.input_layernorm(hidden), hidden
        else:
            h, residual = self.input_layernorm.add_and_norm(hidden, residual)
        qkv = self.qkv_proj(h)
        q_size, kv_size, _ = self.split
        v = qkv[:, q_size + kv_size:].view(T, self.num_kv_heads, self.head_dim)
        if self.q_norm is None:
            # q and k are adjacent in the fused projection: rotate both with one set of ops.
            qk = self.rope(qkv[:, : q_size + kv_size].view(T, self.num_heads + self.num_kv_heads, self.head_dim),
                           cos, sin)
            q, k = qk[:, : self.num_heads], qk[:, self.num_heads:]
        else:
            q = self.q_norm(qkv[:, :q_size].reshape(T, self.num_heads, self.head_dim))
            k = self.k_norm(qkv[:, q_size: q_size + kv_size].reshape(T, self.num_kv_heads, self.head_dim))
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        attn = attention(self.index, q, k, v).reshape(T, -1)
        h, residual = self.post_attention_layernorm.add_and_norm(self.o_proj(attn), residual)
        return self.down_proj(self.act(self.gate_up_proj(h))), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = cfg
        # Parameters are allocated uninitialised in their final dtype: random init and casts of 135M values
        # would cost a second of start-up for numbers load_weights overwrites anyway.
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=dtype),
                                         requires_grad=False)
        # A weight transform may read the table another way (runner/q8_embedding.py: from the LM head's Q8_0
        # blocks, when tied); None: F.embedding over embed_tokens.
        self.embed_lookup: nn.Module | None = None
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dtype) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, dtype=dtype)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention: Attention,
                num_layers: int | None = None) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm. `num_layers`: run only the first layers, then the final
        norm (early-exit drafting: spec/early_exit.py)."""
        x = F.embedding(input_ids, self.embed_tokens) if self.embed_lookup is None else self.embed_lookup(input_ids)
        cos, sin = self.rotary.tables(positions, x.dtype)
        residual = None
        for layer in self.layers[:num_layers]:
            x, residual = layer(x, residual, cos, sin, attention)
        return self.norm.add_and_norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load HF-named tensors, fusing q/k/v and gate/up. Raises if a parameter is left unset."""
        cfg = self.config
        params = dict(self.named_parameters())
        loaded: set[str] = set()

        def put(name: str, tensor: torch.Tensor) -> None:
            param = params[name]
            if tensor.shape != param.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(param.shape)}")
            # Adopt the tensor rather than copy into the (untouched) parameter: no second pass over memory.
            param.data = tensor.to(param.dtype).contiguous()
            loaded.add(name)

        def get(name: str) -> torch.Tensor:
            if name not in weights:
                raise ValueError(f"checkpoint is missing tensor {name!r}")
            return weights[name]

        put("embed_tokens", get("model.embed_tokens.weight"))
        put("norm.weight", get("model.norm.weight"))
        head = weights.get("lm_head.weight")
        put("lm_head.weight", head if head is not None and not cfg.tie_word_embeddings
            else get("model.embed_tokens.weight"))
        for i in range(cfg.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            attn = src + "self_attn."
            put(dst + "qkv_proj.weight", torch.cat([get(attn + f"{p}_proj.weight") for p in "qkv"]))
            if cfg.attention_bias:
                put(dst + "qkv_proj.bias", torch.cat([get(attn + f"{p}_proj.bias") for p in "qkv"]))
            put(dst + "o_proj.weight", get(attn + "o_proj.weight"))
            put(dst + "gate_up_proj.weight",
                torch.cat([get(src + "mlp.gate_proj.weight"), get(src + "mlp.up_proj.weight")]))
            put(dst + "down_proj.weight", get(src + "mlp.down_proj.weight"))
            put(dst + "input_layernorm.weight", get(src + "input_layernorm.weight"))
            put(dst + "post_attention_layernorm.weight", get(src + "post_attention_layernorm.weight"))
            if cfg.qk_norm:
                put(dst + "q_norm.weight", get(attn + "q_norm.weight"))
                put(dst + "k_norm.weight", get(attn + "k_norm.weight"))
        missing = set(params) - loaded
        if missing:
            raise ValueError(f"parameters not loaded from the checkpoint: {sorted(missing)[:5]}")

    def checkpoint_slots(self) -> dict[str, list[Slot]]:
        """Where each HF-named tensor `load_weights` reads lives (plait/models/slots.py). A tied model's
        'lm_head.weight' is accepted and ignored, as `load_weights` ignores it."""
        cfg = self.config
        q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
        tied = cfg.tie_word_embeddings
        slots = {"model.embed_tokens.weight": [Slot("embed_tokens")] + ([Slot("lm_head.weight")] if tied else []),
                 "model.norm.weight": [Slot("norm.weight")],
                 "lm_head.weight": [] if tied else [Slot("lm_head.weight")]}
        for i in range(cfg.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            attn = src + "self_attn."
            slots.update(fused(dst + "qkv_proj.weight", [(attn + f"{p}_proj.weight", n)
                                                         for p, n in zip("qkv", (q, kv, kv))]))
            if cfg.attention_bias:
                slots.update(fused(dst + "qkv_proj.bias", [(attn + f"{p}_proj.bias", n)
                                                           for p, n in zip("qkv", (q, kv, kv))]))
            slots.update(fused(dst + "gate_up_proj.weight", [(src + "mlp.gate_proj.weight", inter),
                                                             (src + "mlp.up_proj.weight", inter)]))
            slots[attn + "o_proj.weight"] = [Slot(dst + "o_proj.weight")]
            slots[src + "mlp.down_proj.weight"] = [Slot(dst + "down_proj.weight")]
            for name in ("input_layernorm", "post_attention_layernorm"):
                slots[src + name + ".weight"] = [Slot(dst + name + ".weight")]
            if cfg.qk_norm:
                slots[attn + "q_norm.weight"] = [Slot(dst + "q_norm.weight")]
                slots[attn + "k_norm.weight"] = [Slot(dst + "k_norm.weight")]
        return slots
