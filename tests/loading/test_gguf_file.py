"""GGUF loading: metadata -> ModelConfig, tensors -> HF names/layout, dequantization, q/k un-permutation.

Fast tests write tiny random GGUF files with `gguf.GGUFWriter`, permuting q/k exactly as llama.cpp's
converter does, so a round trip proves the loader undoes it. The slow test compares the default
model against transformers' own GGUF loader.
"""

from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from plait.loading import load_model
from plait.loading.gguf_file import dequantize, hf_name, load_gguf, read_gguf
from plait.loading.sources import expected_weight_names

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 2, 64, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """Byte-level BPE vocabulary: 3 control tokens, the 256 byte symbols, one token per merge."""
    from tokenizers import pre_tokenizers

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = SPECIALS + byte_symbols + [m.replace(" ", "") for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, MERGES


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_hf_weights(vocab: int, arch: str, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    w = {"model.embed_tokens.weight": rand(vocab, HIDDEN), "model.norm.weight": rand(HIDDEN)}
    if not tied:
        w["lm_head.weight"] = rand(vocab, HIDDEN)
    kv = KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rand(HIDDEN, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = rand(kv, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = rand(kv, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = rand(HIDDEN, HIDDEN)
        w[p + "mlp.gate_proj.weight"] = rand(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = rand(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = rand(HIDDEN, FFN)
        w[p + "input_layernorm.weight"] = rand(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = rand(HIDDEN)
        if arch == "qwen2":
            for x, n in (("q", HIDDEN), ("k", kv), ("v", kv)):
                w[p + f"self_attn.{x}_proj.bias"] = rand(n)
        if arch == "qwen3":
            w[p + "self_attn.q_norm.weight"] = rand(HEAD_DIM)
            w[p + "self_attn.k_norm.weight"] = rand(HEAD_DIM)
    return w


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(name: str) -> str:
    """HF name -> GGUF name, written independently of the loader's table."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name]
    _, _, layer, *mid, kind = name.split(".")
    return f"blk.{layer}.{GGUF_NAMES['.'.join(mid)]}.{kind}"


def write_tiny_gguf(path: Path, arch: str = "llama", qtype: Q = Q.F32, tied: bool = False,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny random model as llama.cpp would; return the HF weights it should load back as."""
    tokens, types, merges = tiny_vocab()
    hf = random_hf_weights(len(tokens), arch, tied, seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)

    expected = {}
    for name, w in hf.items():
        stored = w
        if arch == "llama" and ".q_proj." in name:
            stored = converter_permute(w, HEADS)
        elif arch == "llama" and ".k_proj." in name:
            stored = converter_permute(w, KV_HEADS)
        if w.ndim == 2 and qtype != Q.F32:
            writer.add_tensor(gguf_name(name), quants.quantize(stored, qtype), raw_dtype=qtype)
            # quantization is row-local, so un-permuting the rows of the dequantized tensor
            # gives the dequantized original
            expected[name] = quants.dequantize(quants.quantize(w, qtype), qtype)
        else:
            writer.add_tensor(gguf_name(name), stored)
            expected[name] = w
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_llama_round_trip_undoes_qk_permutation(tmp_path: Path, qtype: Q) -> None:
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(path, qtype=qtype)
    config, weights, tokenizer = load_gguf(path)

    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (LAYERS, HIDDEN, FFN)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (HEADS, KV_HEADS, HEAD_DIM)
    assert config.vocab_size == len(tiny_vocab()[0]) == tokenizer.vocab_size
    assert config.max_position == 256 and config.rope_theta == 50000.0
    assert config.rms_norm_eps == pytest.approx(1e-6)
    assert not config.tie_word_embeddings and not config.attention_bias and not config.qk_norm
    assert config.bos_token_id == 1 and config.eos_token_ids[0] == 2

    assert set(weights) == set(expected) == set(expected_weight_names(config))
    for name, want in expected.items():
        got = weights[name]
        assert got.dtype == torch.float32 and got.is_contiguous(), name
        assert torch.equal(got, torch.from_numpy(want)), name


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_names_flags_and_no_unpermute(tmp_path: Path, arch: str) -> None:
    path = tmp_path / f"{arch}.gguf"
    expected = write_tiny_gguf(path, arch=arch, tied=True)
    config, weights, _ = load_gguf(path)
    assert config.tie_word_embeddings and "lm_head.weight" not in weights
    assert config.attention_bias == (arch == "qwen2") and config.qk_norm == (arch == "qwen3")
    assert config.architecture == {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]
    assert set(weights) == set(expected) == set(expected_weight_names(config))
    for name, want in expected.items():
        assert torch.equal(weights[name], torch.from_numpy(want)), name


def test_dtype_and_load_model_entry(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(path, qtype=Q.Q8_0)
    model = load_model(str(path), dtype=torch.bfloat16)
    assert model.source == str(path) and model.generation_defaults == {}
    for name, want in expected.items():
        assert model.weights[name].dtype == torch.bfloat16
        assert torch.equal(model.weights[name], torch.from_numpy(want).to(torch.bfloat16)), name
    assert model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n")


def test_header_shapes_are_hf_order(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    shapes = {t.name: t.shape for t in read_gguf(path).tensors}
    assert shapes["token_embd.weight"] == (len(tiny_vocab()[0]), HIDDEN)
    assert shapes["blk.0.ffn_down.weight"] == (HIDDEN, FFN)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q6_K])
def test_dequantize_matches_gguf_numpy(qtype: Q) -> None:
    """Our fast kernels agree bit for bit with gguf's reference on arbitrary bytes."""
    from plait.loading.gguf_file import GGUFTensor

    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = 6, 512
    rng = np.random.default_rng(int(qtype))
    raw = rng.integers(0, 256, size=rows * cols // block * block_bytes, dtype=np.uint8)
    raw[1::2] &= 0xBF  # keep f16/bf16 values finite: clear the exponent's top bit of every high byte
    got = dequantize(GGUFTensor("t", (rows, cols), int(qtype), raw))
    want = quants.dequantize(raw.reshape(rows, -1), qtype).reshape(rows, cols)
    np.testing.assert_array_equal(got, want)


def test_name_mapping() -> None:
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    assert hf_name("blk.12.attn_k.bias") == "model.layers.12.self_attn.k_proj.bias"
    assert hf_name("blk.0.attn_q_norm.weight") == "model.layers.0.self_attn.q_norm.weight"
    assert hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("rope_freqs.weight") is None


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF"):
        read_gguf(bad)


# ------------------------------------------------------------------------------------ default model


@pytest.mark.slow
def test_default_model_config_and_speed() -> None:
    start = time.perf_counter()
    model = load_model()
    elapsed = time.perf_counter() - start
    c = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert (c.vocab_size, c.intermediate_size, c.max_position, c.rope_theta) == (49152, 1536, 8192, 100000.0)
    assert c.tie_word_embeddings and "lm_head.weight" not in model.weights
    assert model.tokenizer.token_to_id("<|im_end|>") == 2 and c.eos_token_ids == [2, 0]
    # ~0.5 s on the 2-core dev box; the bound is loose because first-touch of fresh memory on a VM can be
    # several times slower when the host has reclaimed it (seen: 12 s once).
    assert elapsed < 30, f"loading the default model took {elapsed:.1f}s"


@pytest.mark.slow
def test_default_model_weights_match_transformers() -> None:
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    from transformers import AutoModelForCausalLM

    model = load_model()
    path = Path(model.source)
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    state = ref.state_dict()
    assert set(state) - set(model.weights) == {"lm_head.weight"}  # tied: we do not duplicate it
    for name, got in model.weights.items():
        torch.testing.assert_close(got, state[name], atol=1e-6, rtol=0, msg=name)
