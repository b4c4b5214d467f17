"""Tiny random Llama-family models for fast tests, and a plain forward over one sequence."""

from __future__ import annotations

import torch

from plait.config import ModelConfig
from plait.runner.attention import KVCache, PagedAttention
from plait.runner.input_batch import build_input_batch
from plait.core.sched_output import ScheduledChunk


def tiny_config(arch: str = "llama", vocab_size: int = 49152, **overrides) -> ModelConfig:
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
               num_kv_heads=2, head_dim=16, max_position=512, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=arch == "llama", attention_bias=arch == "qwen2", qk_norm=arch == "qwen3",
               architecture=arch, eos_token_ids=[2])
    cfg.update(overrides)
    return ModelConfig(**cfg)


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    h, q, kv, inter = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, \
        cfg.intermediate_size
    w = {"model.embed_tokens.weight": rnd(cfg.vocab_size, h, scale=0.5),
         "model.norm.weight": 1 + rnd(h)}
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = rnd(cfg.vocab_size, h)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rnd(q, h)
        w[p + "self_attn.k_proj.weight"] = rnd(kv, h)
        w[p + "self_attn.v_proj.weight"] = rnd(kv, h)
        w[p + "self_attn.o_proj.weight"] = rnd(h, q)
        if cfg.attention_bias:
            for name, size in (("q", q), ("k", kv), ("v", kv)):
                w[p + f"self_attn.{name}_proj.bias"] = rnd(size)
        if cfg.qk_norm:
            w[p + "self_attn.q_norm.weight"] = 1 + rnd(cfg.head_dim)
            w[p + "self_attn.k_norm.weight"] = 1 + rnd(cfg.head_dim)
        w[p + "mlp.gate_proj.weight"] = rnd(inter, h)
        w[p + "mlp.up_proj.weight"] = rnd(inter, h)
        w[p + "mlp.down_proj.weight"] = rnd(h, inter)
        w[p + "input_layernorm.weight"] = 1 + rnd(h)
        w[p + "post_attention_layernorm.weight"] = 1 + rnd(h)
    return w


def plait_logits(model, token_ids: list[int], chunk_size: int | None = None, block_size: int = 4) -> torch.Tensor:
    """Logits at every position of one sequence, computed in chunks through the paged KV cache."""
    cfg = model.config
    num_blocks = -(-len(token_ids) // block_size)
    cache = KVCache(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                    next(model.parameters()).dtype)
    table = list(range(num_blocks))
    chunk_size = chunk_size or len(token_ids)
    outs = []
    with torch.inference_mode():
        for start in range(0, len(token_ids), chunk_size):
            chunk = ScheduledChunk("r", token_ids[start: start + chunk_size], start, table, sample=False)
            batch = build_input_batch([chunk], block_size, torch.device("cpu"))
            attn = PagedAttention(cache, batch.attention, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
            outs.append(model.compute_logits(model(batch.input_ids, batch.positions, attn)).float())
    return torch.cat(outs)


def wait_kv_free(engine, timeout: float = 20.0) -> None:
    """Every KV block of an AsyncLLM free again within `timeout` seconds. A stop string found by the frontend
    ends its sample in the engine a moment after the caller saw the final output, so a test polls."""
    import time

    deadline = time.monotonic() + timeout
    while not (engine.engine.scheduler.kv.all_blocks_free() and not engine.engine.has_unfinished()):
        assert time.monotonic() < deadline, f"KV blocks still held after {timeout} s: {engine.stats()}"
        time.sleep(0.01)
