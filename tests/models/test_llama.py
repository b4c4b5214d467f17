"""The Llama-family forward against transformers' own implementations, on tiny random weights (fp32)."""

import pytest
import torch

from plait.models import build_model
from tests.helpers import plait_logits, random_weights, tiny_config

transformers = pytest.importorskip("transformers")

HF_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
              "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}


def hf_model(cfg, weights):
    config_cls, model_cls = (getattr(transformers, n) for n in HF_CLASSES[cfg.architecture])
    kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
                  rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position,
                  tie_word_embeddings=cfg.tie_word_embeddings)
    if cfg.rope_scaling:
        kwargs["rope_scaling"] = cfg.rope_scaling
    if cfg.architecture == "llama":
        kwargs["attention_bias"] = False
    hf_cfg = config_cls(**kwargs)
    model = model_cls(hf_cfg).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected
    assert all("lm_head" in m or "rotary" in m for m in missing), missing
    return model


def ours(cfg, weights):
    model = build_model(cfg)
    model.load_weights(weights)
    return model.eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers(arch):
    cfg = tiny_config(arch, vocab_size=512)
    weights = random_weights(cfg, seed=1)
    tokens = torch.randint(0, cfg.vocab_size, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        expected = hf_model(cfg, weights)(torch.tensor([tokens])).logits[0]
    got = plait_logits(ours(cfg, weights), tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_llama3_rope_scaling_matches_transformers():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    cfg = tiny_config("llama", vocab_size=256, rope_scaling=scaling, rope_theta=500000.0)
    weights = random_weights(cfg, seed=2)
    tokens = list(range(5, 205))
    with torch.no_grad():
        expected = hf_model(cfg, weights)(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(plait_logits(ours(cfg, weights), tokens), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_prefill_matches_one_pass(chunk):
    cfg = tiny_config("llama", vocab_size=300)
    model = ours(cfg, random_weights(cfg, seed=4))
    tokens = torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(5)).tolist()
    whole = plait_logits(model, tokens)
    torch.testing.assert_close(plait_logits(model, tokens, chunk_size=chunk), whole, atol=1e-5, rtol=1e-5)
    assert torch.equal(plait_logits(model, tokens, chunk_size=chunk).argmax(-1), whole.argmax(-1))
