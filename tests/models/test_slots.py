"""checkpoint_slots() is the exact inverse of load_weights' fusions, for every family and option: writing every
checkpoint tensor through its slots builds bit-identical parameters, and the slots name exactly what it reads."""

import pytest
import torch

from plait.engine.partial_weights import slot_shape, write_partial
from plait.loading.gemma3_config import gemma3_config_from_hf
from plait.models import build_model
from tests.helpers import tiny_config

GEMMA = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=10,
             sliding_window_pattern=2, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
             query_pre_attn_scalar=24, final_logit_softcapping=30.0, rms_norm_eps=1e-6,
             model_type="gemma3_text", architectures=["Gemma3ForCausalLM"])


class Recorder(dict):
    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)

    def __contains__(self, name):
        self.read.add(name)
        return super().__contains__(name)


CONFIGS = {
    "llama_tied": lambda: tiny_config("llama", vocab_size=300),
    "llama_untied": lambda: tiny_config("llama", vocab_size=300, tie_word_embeddings=False),
    "qwen2_bias": lambda: tiny_config("qwen2", vocab_size=300),
    "qwen3_qk_norm": lambda: tiny_config("qwen3", vocab_size=300),
    "gemma3_tied": lambda: gemma3_config_from_hf(dict(GEMMA, tie_word_embeddings=True)),
    "gemma3_untied": lambda: gemma3_config_from_hf(dict(GEMMA, tie_word_embeddings=False)),
}


def random_checkpoint(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    out = {}
    for name, slots in model.checkpoint_slots().items():
        if slots:
            out[name] = torch.randn(slot_shape(shapes[slots[0].param], slots[0]), generator=g)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_slots_rebuild_what_load_weights_builds(name, dtype):
    cfg = CONFIGS[name]()
    loaded = build_model(cfg, dtype)
    weights = random_checkpoint(loaded)
    probe = Recorder(weights)
    loaded.load_weights(probe)
    slots = loaded.checkpoint_slots()
    assert probe.read - {"lm_head.weight"} == set(slots) - {"lm_head.weight"}  # the same names, none forgotten
    written = build_model(cfg, dtype)
    for p in written.parameters():
        p.data.zero_()
    assert write_partial(written, weights) == set(dict(written.named_parameters()))
    got, want = dict(written.named_parameters()), dict(loaded.named_parameters())
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]


def test_writing_q_proj_changes_only_the_q_rows_of_the_fused_tensor():
    cfg = tiny_config("llama", vocab_size=300)
    model = build_model(cfg)
    model.load_weights(random_checkpoint(model))
    before = model.layers[1].qkv_proj.weight.clone()
    q = torch.full((cfg.num_heads * cfg.head_dim, cfg.hidden_size), 0.5)
    write_partial(model, {"model.layers.1.self_attn.q_proj.weight": q})
    after = model.layers[1].qkv_proj.weight
    assert torch.equal(after[:q.shape[0]], q) and torch.equal(after[q.shape[0]:], before[q.shape[0]:])
