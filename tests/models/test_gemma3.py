"""The Gemma 3 forward against transformers' Gemma3ForCausalLM on tiny random weights (fp32), with sequences
longer than the sliding window, whole and in chunks, through the PyTorch path and the C kernel."""

import pytest
import torch

from plait.core.sched_output import ScheduledChunk
from plait.loading.gemma3_config import gemma3_config_from_hf
from plait.models import build_model
from plait.runner import native
from plait.runner.attention import KVCache, PagedAttention
from plait.runner.input_batch import build_input_batch

transformers = pytest.importorskip("transformers")
kernels = native.load_kernels()

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=10,
            sliding_window_pattern=2, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
            query_pre_attn_scalar=24, final_logit_softcapping=30.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
            model_type="gemma3_text", architectures=["Gemma3ForCausalLM"])


def hf_and_ours(seed=0, **overrides):
    hf_dict = dict(TINY, **overrides)
    hf_cfg = transformers.Gemma3TextConfig(**{k: v for k, v in hf_dict.items()
                                              if k not in ("model_type", "architectures")})
    torch.manual_seed(seed)
    hf = transformers.Gemma3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # norms start at zero (multiplier 1): randomise them so (1 + w) is really tested
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
            else:
                p.normal_(0, 0.2)
    weights = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    cfg = gemma3_config_from_hf(hf_dict)
    ours = build_model(cfg)
    ours.load_weights(weights)
    return hf, ours.eval()


def plait_logits(model, tokens, chunk=None, use_kernel=False, block_size=4):
    cfg = model.config
    num_blocks = -(-len(tokens) // block_size)
    cache = KVCache(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, torch.float32)
    table, chunk = list(range(num_blocks)), chunk or len(tokens)
    outs = []
    with torch.inference_mode():
        for start in range(0, len(tokens), chunk):
            sc = ScheduledChunk("r", tokens[start: start + chunk], start, table, sample=False)
            batch = build_input_batch([sc], block_size, torch.device("cpu"), attention_kernel=use_kernel)
            attn = PagedAttention(cache, batch.attention, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                  kernels=kernels if use_kernel else None)
            outs.append(model.compute_logits(model(batch.input_ids, batch.positions, attn)))
    return torch.cat(outs)


def test_config_from_hf_reads_the_gemma_fields():
    cfg = gemma3_config_from_hf(TINY)
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * 2
    assert (cfg.sliding_window, cfg.rope_local_theta, cfg.rope_theta) == (10, 10_000.0, 1_000_000.0)
    assert cfg.query_pre_attn_scalar == 24 and cfg.final_logit_softcapping == 30.0 and cfg.qk_norm


@pytest.mark.parametrize("use_kernel", [False, pytest.param(True, marks=pytest.mark.skipif(
    kernels is None, reason="C kernels unavailable"))])
@pytest.mark.parametrize("chunk", [None, 7, 1])
def test_logits_match_transformers_across_the_window(use_kernel, chunk):
    hf, ours = hf_and_ours()
    tokens = torch.randint(0, 300, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0]
    got = plait_logits(ours, tokens, chunk=chunk, use_kernel=use_kernel)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_window_matters():
    """The same weights with a window wider than the sequence give different late logits: the test above would
    notice a backend that ignored the window."""
    _, ours = hf_and_ours()
    _, wide = hf_and_ours(sliding_window=64)
    tokens = list(range(5, 42))
    a, b = plait_logits(ours, tokens), plait_logits(wide, tokens)
    torch.testing.assert_close(a[:10], b[:10])
    assert (a[20:] - b[20:]).abs().max() > 1e-3


def test_missing_tensor_is_named():
    _, ours = hf_and_ours()
    hf, _ = hf_and_ours()
    weights = {k: v for k, v in hf.state_dict().items() if "layers.1.pre_feedforward_layernorm" not in k}
    with pytest.raises(ValueError, match="pre_feedforward_layernorm"):
        ours.load_weights(weights)
