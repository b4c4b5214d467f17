"""Wiring a model-based drafter (early_exit, draft_model) into a built engine."""

from __future__ import annotations

import torch

from plait.config import ModelConfig
from plait.runner.attention import KVCache
from plait.spec.config import SpeculativeConfig
from plait.spec.model_drafter import ModelDrafter


def build_drafter(spec: SpeculativeConfig, model: torch.nn.Module, cache: KVCache, kernels, dtype: torch.dtype,
                  device: torch.device, max_model_len: int,
                  draft: tuple[ModelConfig, dict[str, torch.Tensor]] | None = None) -> ModelDrafter | None:
    """None for lookup drafters. `draft`: the draft model's config and weights already in hand (tests); else
    `spec.model` is loaded."""
    cfg = model.config
    if spec.method == "early_exit":
        layers = spec.exit_layer or max(1, cfg.num_layers // 4)
        if layers >= cfg.num_layers:
            raise ValueError(f"speculative_config.exit_layer must be < the model's {cfg.num_layers} layers, "
                             f"got {layers}")
        return ModelDrafter(lambda ids, pos, attention: model(ids, pos, attention, num_layers=layers),
                            model.compute_logits, cache, (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), kernels)
    if spec.method != "draft_model":
        return None
    from plait.models import build_model

    if draft is None:
        from plait.loading import load_model

        loaded = load_model(spec.model, dtype=dtype)
        draft = (loaded.config, loaded.weights)
    draft_cfg, weights = draft
    if draft_cfg.vocab_size != cfg.vocab_size:
        raise ValueError(f"speculative_config.model must share the target's vocabulary ({cfg.vocab_size} tokens), "
                         f"got {draft_cfg.vocab_size}")
    if draft_cfg.max_position < max_model_len:
        raise ValueError(f"speculative_config.model's context ({draft_cfg.max_position}) is shorter than the "
                         f"engine's max_model_len ({max_model_len})")
    draft_model = build_model(draft_cfg, dtype)
    draft_model.load_weights(weights)
    draft_model.to(device).eval()
    if kernels is not None:
        from plait.runner.native.modules import use_native_layers

        use_native_layers(draft_model, kernels)
    # Same blocks, same block size: the target's block tables index this cache too.
    draft_cache = KVCache(draft_cfg.num_layers, cache.num_blocks, cache.block_size, draft_cfg.num_kv_heads,
                          draft_cfg.head_dim, dtype, device)
    return ModelDrafter(draft_model, draft_model.compute_logits, draft_cache,
                        (draft_cfg.num_heads, draft_cfg.num_kv_heads, draft_cfg.head_dim), kernels, sync=True)
