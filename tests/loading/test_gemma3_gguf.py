"""A tiny Gemma 3 GGUF written as llama.cpp's converter writes one (norms stored as 1 + w, Gemma's tensor names,
a SentencePiece vocabulary without merges, no chat template): plait loads it back to HF's weights and numbers,
builds the tokenizer transformers builds from the same metadata, and runs it like transformers' Gemma 3."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from plait.loading.gemma3_config import FULL, SLIDING
from plait.loading.gguf_file import load_gguf, read_gguf
from plait.loading.spm_tokenizer import derive_merges
from plait.loading.tokenizer import Tokenizer

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, WINDOW = 6, 64, 4, 1, 32, 96, 8
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁w", "or", "▁wor", "ld",
          "▁world", "  ", "▁hello", "▁h", "lo", "▁▁"]
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
         "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def vocab() -> tuple[list[str], list[int]]:
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = SPECIALS + byte_tokens + PIECES
    types = [3] * len(SPECIALS) + [6] * 256 + [1] * len(PIECES)
    return tokens, types


def hf_weights(n_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"model.embed_tokens.weight": rand(n_vocab, HIDDEN), "model.norm.weight": rand(HIDDEN)}
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.update({p + "self_attn.q_proj.weight": rand(q, HIDDEN), p + "self_attn.k_proj.weight": rand(kv, HIDDEN),
                  p + "self_attn.v_proj.weight": rand(kv, HIDDEN), p + "self_attn.o_proj.weight": rand(HIDDEN, q),
                  p + "self_attn.q_norm.weight": rand(HEAD_DIM), p + "self_attn.k_norm.weight": rand(HEAD_DIM),
                  p + "mlp.gate_proj.weight": rand(FFN, HIDDEN), p + "mlp.up_proj.weight": rand(FFN, HIDDEN),
                  p + "mlp.down_proj.weight": rand(HIDDEN, FFN)})
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            w[p + norm + ".weight"] = rand(HIDDEN)
    return w


def gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, *mid, kind = name.split(".")
    return f"blk.{layer}.{NAMES['.'.join(mid)]}.{kind}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gemma3") / "tiny-gemma3.gguf"
    tokens, types = vocab()
    hf = hf_weights(len(tokens))
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(WINDOW)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-1000.0] * len(SPECIALS) + [0.0] * (len(tokens) - len(SPECIALS)))
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(True)
    for name, w in hf.items():
        # llama.cpp's Gemma 3 converter adds 1 to every norm weight
        writer.add_tensor(gguf_name(name), w + 1.0 if name.endswith("norm.weight") else w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, hf


def test_config_and_weights_round_trip(tiny) -> None:
    path, hf = tiny
    config, weights, tokenizer = load_gguf(path)
    assert config.architecture == "Gemma3ForCausalLM" and config.tie_word_embeddings and config.qk_norm
    assert config.layer_types == [SLIDING] * 5 + [FULL]
    assert (config.sliding_window, config.rope_local_theta, config.rope_theta) == (WINDOW, 10_000.0, 1_000_000.0)
    assert config.query_pre_attn_scalar == HEAD_DIM and config.head_dim == HEAD_DIM
    assert set(weights) == set(hf)
    for name, w in hf.items():
        torch.testing.assert_close(weights[name], torch.from_numpy(w), atol=1e-6, rtol=0)
    assert tokenizer.eos_token_ids == [1, 6] and tokenizer.bos_token_id == 2  # <end_of_turn> ends generation too


def test_forward_matches_transformers_on_the_file(tiny) -> None:
    transformers = pytest.importorskip("transformers")
    from plait.models import build_model
    from tests.models.test_gemma3 import plait_logits

    path, hf = tiny
    config, weights, _ = load_gguf(path)
    ours = build_model(config)
    ours.load_weights(weights)
    ref = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=config.vocab_size, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, sliding_window=WINDOW,
        max_position_embeddings=256, rms_norm_eps=1e-6, query_pre_attn_scalar=HEAD_DIM)).eval()
    ref.model.load_state_dict({k[len("model."):]: torch.from_numpy(v) for k, v in hf.items()})
    tokens = torch.randint(0, config.vocab_size, (21,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        expected = ref(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(plait_logits(ours.eval(), tokens, chunk=5), expected, atol=1e-4, rtol=1e-4)


def test_tokenizer_matches_transformers_gguf_builder(tiny) -> None:
    pytest.importorskip("transformers")
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    path, _ = tiny
    meta = read_gguf(path).metadata
    ours = Tokenizer.from_gguf_metadata(meta)
    tokens, types = vocab()
    theirs, _ = convert_gguf_tokenizer("gemma3", {"tokens": tokens, "scores": meta["tokenizer.ggml.scores"],
                                                  "token_type": types, "tokenizer_type": "llama"})
    for text in ["hello world", "hello  world", " hello", "hellow\nworld", "héllo 🙂", "<start_of_turn>hello"]:
        want = theirs.encode(text, add_special_tokens=False).ids
        assert ours.encode(text, add_special_tokens=False) == want, text
        assert ours.encode(text) == [2] + want
        assert ours.decode(want, skip_special_tokens=False) == theirs.decode(want, skip_special_tokens=False)


def test_merges_follow_the_reference_derivation() -> None:
    pytest.importorskip("transformers")
    from transformers.tokenization_utils_base import generate_merges

    tokens, _ = vocab()
    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    expected = generate_merges({t: i for i, t in enumerate(tokens)}, {t: -i for i, t in enumerate(tokens)})
    assert derive_merges(tokens) == expected


def test_default_chat_template_when_the_file_has_none(tiny) -> None:
    path, _ = tiny
    tok = Tokenizer.from_gguf_metadata(read_gguf(path).metadata)
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}])
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\nhello"
                    "<end_of_turn>\n<start_of_turn>user\nagain<end_of_turn>\n<start_of_turn>model\n")
