"""Gemma 3 text decoder (Gemma 3 270M / 1B and the text stack of the larger ones) over a packed token batch.

What sets it apart from the Llama family (models/llama.py):
  * embeddings scaled by sqrt(hidden) (rounded to the model dtype, as the reference does),
  * four RMSNorms per layer: before and after attention, before and after the MLP, and RMSNorm over each head of
    q and k; Gemma's norms multiply by (1 + weight): we store 1 + weight once at load, so every norm is a plain
    RMSNorm and the fused kernels (runner/native) apply unchanged,
  * GeGLU MLP: gelu_tanh(gate) * up,
  * interleaved attention layers: most are local (each token sees the last `sliding_window` positions, RoPE base
    rope_local_theta), every sixth is global (all positions, rope_theta and any rope scaling),
  * attention scale query_pre_attn_scalar ** -0.5, optional final logit soft-capping, tied embeddings.

The model sees only `input_ids[T]`, `positions[T]` and the `attention` callable; local layers pass their window
to it (`window=`), so the attention backend decides how to skip what left the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plait.config import ModelConfig
from plait.loading.gemma3_config import FULL, SLIDING, layer_types as default_layer_types
from plait.models.layers import RMSNorm, Rope, RotaryEmbedding
from plait.models.llama import Attention, Linear
from plait.models.slots import Slot, fused


class GeluTanhAndMul(nn.Module):
    """gelu_tanh(gate) * up for the fused [gate | up] projection."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.index = index
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        layer_types = cfg.layer_types or default_layer_types(cfg.num_layers)
        self.sliding = layer_types[index] == SLIDING
        self.window = cfg.sliding_window if self.sliding else None
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.split = (q_size, kv_size)
        # The attention backend scales by head_dim ** -0.5; Gemma wants query_pre_attn_scalar ** -0.5 (the same
        # number for the 270M and 1B models, so usually no extra op).
        scalar = cfg.query_pre_attn_scalar or cfg.head_dim
        self.q_scale = (cfg.head_dim / scalar) ** 0.5
        self.qkv_proj = Linear(cfg.hidden_size, q_size + 2 * kv_size, dtype=dtype)
        self.o_proj = Linear(q_size, cfg.hidden_size, dtype=dtype)
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, dtype=dtype)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, dtype=dtype)
        self.act = GeluTanhAndMul()
        self.rope = Rope()
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps, dtype)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, dtype)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, dtype)
        self.q_norm = RMSNorm(cfg.head_dim, eps, dtype)
        self.k_norm = RMSNorm(cfg.head_dim, eps, dtype)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, rope_tables: dict,
                attention: Attention) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: the previous layer's (post-normed) MLP output, or the embeddings for the first layer; residual:
        the stream before it (None for the first layer). Returns this layer's MLP output and the stream; the next
        norm adds them (one fused op on CPU)."""
        T = hidden.shape[0]
        if residual is None:
            h, residual = self.input_layernorm(hidden), hidden
        else:
            h, residual = self.input_layernorm.add_and_norm(hidden, residual)
        qkv = self.qkv_proj(h)
        q_size, kv_size = self.split
        q = self.q_norm(qkv[:, :q_size].reshape(T, self.num_heads, self.head_dim))
        k = self.k_norm(qkv[:, q_size: q_size + kv_size].reshape(T, self.num_kv_heads, self.head_dim))
        v = qkv[:, q_size + kv_size:].view(T, self.num_kv_heads, self.head_dim)
        cos, sin = rope_tables[SLIDING if self.sliding else FULL]
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        if self.window is not None:
            attn = attention(self.index, q, k, v, window=self.window)
        else:
            attn = attention(self.index, q, k, v)
        h = self.post_attention_layernorm(self.o_proj(attn.reshape(T, -1)))
        h, residual = self.pre_feedforward_layernorm.add_and_norm(h, residual)
        return self.post_feedforward_layernorm(self.down_proj(self.act(self.gate_up_proj(h)))), residual


class Gemma3ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = cfg
        if cfg.sliding_window is None:
            raise ValueError("Gemma 3 needs config.sliding_window (the local layers' window)")
        # Uninitialised: load_weights overwrites every value (a 262k x 640 random init would cost seconds).
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=dtype),
                                         requires_grad=False)
        # A weight transform may read the table another way (runner/q8_embedding.py: from the LM head's Q8_0
        # blocks, when tied); None: F.embedding over embed_tokens.
        self.embed_lookup: nn.Module | None = None
        # The reference multiplies by sqrt(hidden) rounded to the weights' dtype (25.25 in bf16 for 640).
        self.register_buffer("embed_scale", torch.tensor(cfg.hidden_size ** 0.5, dtype=dtype), persistent=False)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(cfg, i, dtype) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, dtype=dtype)
        self.rotary = nn.ModuleDict({
            FULL: RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling),
            SLIDING: RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_local_theta or 10000.0, None),
        })

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention: Attention,
                num_layers: int | None = None) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm. `num_layers`: run only the first layers, then the final
        norm (early-exit drafting: spec/early_exit.py)."""
        x = F.embedding(input_ids, self.embed_tokens) if self.embed_lookup is None else self.embed_lookup(input_ids)
        x = x * self.embed_scale
        tables = {kind: rotary.tables(positions, x.dtype) for kind, rotary in self.rotary.items()}
        residual = None
        for layer in self.layers[:num_layers]:
            x, residual = layer(x, residual, tables, attention)
        return self.norm.add_and_norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load HF-named tensors in HF's convention (norm weights w, applied as 1 + w), fusing q/k/v and gate/up.
        Raises if a parameter is left unset."""
        cfg = self.config
        params = dict(self.named_parameters())
        loaded: set[str] = set()

        def put(name: str, tensor: torch.Tensor) -> None:
            param = params[name]
            if tensor.shape != param.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(param.shape)}")
            param.data = tensor.to(param.dtype).contiguous()
            loaded.add(name)

        def get(name: str) -> torch.Tensor:
            if name not in weights:
                raise ValueError(f"checkpoint is missing tensor {name!r}")
            return weights[name]

        def norm(name: str) -> torch.Tensor:
            # 1 + w in fp32, then to the model dtype: the multiplier the reference computes in every call.
            return 1.0 + get(name).float()

        embed = get("model.embed_tokens.weight")
        put("embed_tokens", embed)
        head = weights.get("lm_head.weight")
        put("lm_head.weight", head if head is not None and not cfg.tie_word_embeddings else embed)
        put("norm.weight", norm("model.norm.weight"))
        for i in range(cfg.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            attn = src + "self_attn."
            put(dst + "qkv_proj.weight", torch.cat([get(attn + f"{p}_proj.weight") for p in "qkv"]))
            put(dst + "o_proj.weight", get(attn + "o_proj.weight"))
            put(dst + "gate_up_proj.weight",
                torch.cat([get(src + "mlp.gate_proj.weight"), get(src + "mlp.up_proj.weight")]))
            put(dst + "down_proj.weight", get(src + "mlp.down_proj.weight"))
            for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                         "post_feedforward_layernorm"):
                put(dst + name + ".weight", norm(src + name + ".weight"))
            put(dst + "q_norm.weight", norm(attn + "q_norm.weight"))
            put(dst + "k_norm.weight", norm(attn + "k_norm.weight"))
        missing = set(params) - loaded
        if missing:
            raise ValueError(f"parameters not loaded from the checkpoint: {sorted(missing)[:5]}")

    def checkpoint_slots(self) -> dict[str, list[Slot]]:
        """Where each HF-named tensor `load_weights` reads lives (plait/models/slots.py); norms hold 1 + w."""
        cfg = self.config
        q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
        tied = cfg.tie_word_embeddings
        slots = {"model.embed_tokens.weight": [Slot("embed_tokens")] + ([Slot("lm_head.weight")] if tied else []),
                 "model.norm.weight": [Slot("norm.weight", plus_one=True)],
                 "lm_head.weight": [] if tied else [Slot("lm_head.weight")]}
        for i in range(cfg.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            attn = src + "self_attn."
            slots.update(fused(dst + "qkv_proj.weight", [(attn + f"{p}_proj.weight", n)
                                                         for p, n in zip("qkv", (q, kv, kv))]))
            slots.update(fused(dst + "gate_up_proj.weight", [(src + "mlp.gate_proj.weight", inter),
                                                             (src + "mlp.up_proj.weight", inter)]))
            slots[attn + "o_proj.weight"] = [Slot(dst + "o_proj.weight")]
            slots[src + "mlp.down_proj.weight"] = [Slot(dst + "down_proj.weight")]
            for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                         "post_feedforward_layernorm"):
                slots[src + name + ".weight"] = [Slot(dst + name + ".weight", plus_one=True)]
            for name in ("q_norm", "k_norm"):
                slots[attn + name + ".weight"] = [Slot(dst + name + ".weight", plus_one=True)]
        return slots
