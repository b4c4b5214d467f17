"""Gemma 3's architecture numbers from a HuggingFace config.json or from GGUF metadata.

Kept apart from ModelConfig.from_hf / gguf_file.config_from_metadata because Gemma 3 needs what the Llama family
does not: per-layer attention kinds, the sliding window, a second RoPE base, the attention scale and soft-capping;
and because its files leave several of them implicit (the reference defaults below).
"""

from __future__ import annotations

from typing import Any

from plait.config import ModelConfig

GEMMA3_ARCHITECTURE = "Gemma3ForCausalLM"
SLIDING, FULL = "sliding_attention", "full_attention"
DEFAULT_PATTERN = 6  # every sixth layer is global (transformers' and llama.cpp's default for Gemma 3)
DEFAULT_LOCAL_THETA = 10_000.0
DEFAULT_GLOBAL_THETA = 1_000_000.0


def is_gemma3_hf(cfg: dict) -> bool:
    arch = (cfg.get("architectures") or [""])[0]
    return cfg.get("model_type") == "gemma3_text" or arch == GEMMA3_ARCHITECTURE


def layer_types(num_layers: int, pattern: int = DEFAULT_PATTERN) -> list[str]:
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers)]


def gemma3_config_from_hf(cfg: dict) -> ModelConfig:
    """A Gemma 3 text config.json (model_type gemma3_text) -> ModelConfig."""
    if cfg.get("model_type") == "gemma3" and "text_config" in cfg:
        raise NotImplementedError("this is a multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration); "
                                  "plait runs Gemma 3 text models (Gemma3ForCausalLM) only")
    if cfg.get("attn_logit_softcapping"):
        raise NotImplementedError("attention logit soft-capping is not supported (Gemma 3 does not use it)")
    layers = cfg.get("num_hidden_layers", 26)
    heads = cfg.get("num_attention_heads", 8)
    head_dim = cfg.get("head_dim", 256)
    rope = cfg.get("rope_parameters") or {}
    full = rope.get(FULL) or {}
    local = rope.get(SLIDING) or {}
    scaling = full if full.get("rope_type", "default") != "default" else cfg.get("rope_scaling")
    if scaling:
        scaling = dict(scaling, rope_type=scaling.get("rope_type", scaling.get("type")))
        if scaling["rope_type"] == "default":
            scaling = None
    eos = cfg.get("eos_token_id", 1)
    return ModelConfig(
        vocab_size=cfg.get("vocab_size", 262_208),
        hidden_size=cfg.get("hidden_size", 2304),
        intermediate_size=cfg.get("intermediate_size", 9216),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads", 4),
        head_dim=head_dim,
        max_position=cfg.get("max_position_embeddings", 131_072),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=full.get("rope_theta", cfg.get("rope_theta", DEFAULT_GLOBAL_THETA)),
        rope_scaling=scaling or None,
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
        qk_norm=True,
        architecture=GEMMA3_ARCHITECTURE,
        bos_token_id=cfg.get("bos_token_id", 2),
        eos_token_ids=[] if eos is None else [eos] if isinstance(eos, int) else list(eos),
        layer_types=list(cfg.get("layer_types") or layer_types(layers, cfg.get("sliding_window_pattern",
                                                                            DEFAULT_PATTERN))),
        sliding_window=cfg.get("sliding_window", 4096),
        rope_local_theta=local.get("rope_theta", cfg.get("rope_local_base_freq", DEFAULT_LOCAL_THETA)),
        query_pre_attn_scalar=cfg.get("query_pre_attn_scalar", 256),
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
    )


def gemma3_fields_from_gguf(meta: dict[str, Any], num_layers: int, hidden: int, heads: int,
                            head_dim: int) -> dict[str, Any]:
    """The Gemma-3-only ModelConfig fields of a `gemma3` GGUF file.

    llama.cpp writes the window but not the layer pattern, the local RoPE base or the attention scale; it
    hard-codes them (pattern 6, base 10000, scale head_dim ** -0.5 except for the 62-layer 27B model, which uses
    (hidden / heads) ** -0.5), and so do we.
    """
    pattern = meta.get("gemma3.attention.sliding_window_pattern", DEFAULT_PATTERN)
    if isinstance(pattern, list):  # newer files: one flag per layer, true where the layer is local
        kinds = [SLIDING if flag else FULL for flag in pattern]
    else:
        kinds = layer_types(num_layers, int(pattern))
    return dict(
        layer_types=kinds,
        sliding_window=meta.get("gemma3.attention.sliding_window", 4096),
        rope_local_theta=float(meta.get("gemma3.rope.local.freq_base", DEFAULT_LOCAL_THETA)),
        query_pre_attn_scalar=float(hidden // heads if num_layers == 62 else head_dim),
        final_logit_softcapping=meta.get("gemma3.final_logit_softcapping"),
    )
