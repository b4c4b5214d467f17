"""HF directory loading: tiny random transformers models saved with save_pretrained, loaded back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plait.loading import load_model
from plait.loading.hf_dir import load_hf_dir
from plait.loading.sources import expected_weight_names
from plait.loading.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def write_tokenizer(path: Path) -> int:
    """A byte-level BPE tokenizer.json (256 bytes + 3 specials) and its config; returns the vocab size."""
    from tokenizers import pre_tokenizers

    tokens = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet())
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3, 3, 3] + [1] * 256, "tokenizer.ggml.merges": []}
    Tokenizer.from_gguf_metadata(meta)._backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False, "chat_template": CHATML}))
    return len(tokens)


def save_tiny(path: Path, arch: str = "llama", tied: bool = False, shard: str | None = None,
              dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Save a tiny random model + tokenizer + generation config; return its state dict."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(path)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-6)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[arch]
    extra = {"head_dim": 16} if arch == "qwen3" else {}
    torch.manual_seed(0)
    model = cls[1](cls[0](**common, **extra)).to(dtype)
    with torch.no_grad():  # norms start at exactly 1; make them distinguishable
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2, 0], "temperature": 0.2, "top_p": 0.9, "do_sample": True,
         "transformers_version": "5"}))
    return model.state_dict()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("shard", [None, "40KB"])
def test_llama_round_trip(tmp_path: Path, tied: bool, shard: str | None) -> None:
    state = save_tiny(tmp_path, tied=tied, shard=shard)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()
        assert len(list(tmp_path.glob("*.safetensors"))) > 1
    config, weights, tokenizer, defaults = load_hf_dir(tmp_path)

    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (2, 64, 4, 2)
    assert config.tie_word_embeddings == tied
    assert set(weights) == set(expected_weight_names(config))
    for name, tensor in weights.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, state[name]), name
    assert defaults == {"temperature": 0.2, "top_p": 0.9, "do_sample": True}
    assert tokenizer.eos_token_ids == config.eos_token_ids == [2, 0]
    assert tokenizer.bos_token_id == config.bos_token_id == 1 and not tokenizer.add_bos
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}]) == "<|im_start|>user\nx<|im_end|>\n"


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_variants(tmp_path: Path, arch: str) -> None:
    state = save_tiny(tmp_path, arch=arch, tied=True)
    config, weights, _, _ = load_hf_dir(tmp_path)
    assert config.attention_bias == (arch == "qwen2") and config.qk_norm == (arch == "qwen3")
    assert set(weights) == set(expected_weight_names(config))
    for name, tensor in weights.items():
        assert torch.equal(tensor, state[name]), name


def test_bf16_checkpoint_cast(tmp_path: Path) -> None:
    state = save_tiny(tmp_path, dtype=torch.bfloat16)
    model = load_model(str(tmp_path))  # float32 by default
    assert model.source == str(tmp_path)
    for name, tensor in model.weights.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, state[name].float()), name
    model = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in model.weights.values())


def test_missing_shard_is_reported(tmp_path: Path) -> None:
    save_tiny(tmp_path, shard="40KB")
    next(iter(sorted(tmp_path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_hf_dir(tmp_path)


def test_quantized_checkpoint_rejected(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="awq"):
        load_hf_dir(tmp_path)
