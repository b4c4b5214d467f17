"""Tokenizer: GGUF-built byte-level BPE, HF-directory tokenizers, special tokens, chat templates.

Fast tests use a tiny hand-made vocabulary; the slow golden tests compare the default model's
GGUF-built tokenizer with the one transformers builds from the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from plait.loading.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
STRINGS = [
    "Hello world!", "hello world", "  leading spaces and   runs\n\n\ttabs\r\n", "12345 + 678 = 2024.5",
    "déjà vu — naïve café 日本語 テキスト", "emoji 😀👍🏽 🇫🇷 family 👨‍👩‍👧", "def f(x):\n    return x**2  # comment\n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "", " ", "\n", "don't I'll we've THEY'RE",
    "soft\u00adhyphen zero\u200bwidth", "a" * 50, "x<|endoftext|>y", "<|im_end", "tab\tand\u3000ideographic space",
    "السلام عليكم", "Ünïcödé ÀÉÎ", "{\"json\": [1, 2.5e-3, null]}", "$x^2$ \\frac{1}{2}",
]


def tiny_metadata(**overrides: object) -> dict:
    from tokenizers import pre_tokenizers

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = SPECIALS + byte_symbols + [m.replace(" ", "") for m in MERGES]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)),
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML,
    }
    meta.update(overrides)
    return meta


def test_gguf_bpe_merges_and_special_tokens() -> None:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata())
    vocab = tiny_metadata()["tokenizer.ggml.tokens"]
    ids = tok.encode("hello world<|im_end|>")
    assert [vocab[i] for i in ids] == ["hello", "Ġworld", "<|im_end|>"]
    assert tok.decode(ids) == "hello world"
    assert tok.decode(ids, skip_special_tokens=False) == "hello world<|im_end|>"
    assert tok.vocab_size == len(vocab)
    assert tok.all_special_ids == {0, 1, 2}
    assert tok.id_to_token_text(ids[1]) == " world"


def test_gguf_eos_ids_include_eot_and_known_end_tokens() -> None:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata())
    assert tok.eos_token_ids == [2, 0]  # eos, then <|endoftext|> which llama.cpp also treats as end
    tok = Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.eos_token_id": 0,
                                                        "tokenizer.ggml.eot_token_id": 2}))
    assert tok.eos_token_ids == [0, 2]


def test_bos_added_only_when_asked() -> None:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.add_bos_token": True}))
    assert tok.add_bos and tok.encode("hello") == [1, *tok.encode("hello", add_special_tokens=False)]
    tok = Tokenizer.from_gguf_metadata(tiny_metadata())
    assert not tok.add_bos and tok.encode("hello")[0] != 1


def test_encode_batch_matches_encode() -> None:
    for add_bos in (False, True):
        tok = Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.add_bos_token": add_bos}))
        for special in (False, True):
            want = [tok.encode(t, add_special_tokens=special) for t in STRINGS]
            assert tok.encode_batch(STRINGS, add_special_tokens=special) == want


@pytest.mark.parametrize("text", STRINGS)
def test_byte_level_round_trip(text: str) -> None:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata())
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_digits_are_split_for_smollm() -> None:
    meta = tiny_metadata(**{"tokenizer.ggml.merges": MERGES + ["1 2"]})
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + ["12"]
    meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"] + [1]
    assert len(Tokenizer.from_gguf_metadata(meta).encode("12")) == 2
    meta["tokenizer.ggml.pre"] = "gpt2"
    assert len(Tokenizer.from_gguf_metadata(meta).encode("12")) == 1


def test_unsupported_tokenizer_model() -> None:
    with pytest.raises(NotImplementedError, match="'llama'"):
        Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.model": "llama"}))


def test_chat_template_rendering() -> None:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata())
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_chat_template_helpers_match_transformers() -> None:
    """bos_token, raise_exception, tojson, loop controls, trimmed blocks and extra kwargs, like HF."""
    transformers = pytest.importorskip("transformers")
    template = (
        "{{ bos_token }}{% for m in messages %}\n"
        "  {% if m['role'] == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\n"
        "  {% if loop.index > 3 %}{% break %}{% endif %}\n"
        "[{{ m['role'] }}] {{ m['content'] | tojson }}{{ eos_token }}\n"
        "{% endfor %}{% if tools %}{{ tools | tojson(indent=2) }}{% endif %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    tok = Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.chat_template": template}))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok._backend, bos_token="<|im_start|>",
                                              eos_token="<|im_end|>", chat_template=template)
    msgs = [{"role": "user", "content": 'é "quoted" <b>'}, {"role": "assistant", "content": "ok"}] * 3
    tools = [{"name": "f", "parameters": {"x": 1}}]
    for kw in ({}, {"tools": tools}, {"add_generation_prompt": False}):
        want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=kw.get("add_generation_prompt", True),
                                      tools=kw.get("tools"))
        assert tok.apply_chat_template(msgs, **kw) == want
    with pytest.raises(jinja2.TemplateError, match="no bad roles"):
        tok.apply_chat_template([{"role": "bad", "content": ""}])


def test_no_chat_template() -> None:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.chat_template": None}))
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_sandbox_blocks_attribute_escape() -> None:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata(**{
        "tokenizer.chat_template": "{{ messages.__class__.__mro__ }}"}))
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template([])


def write_hf_tokenizer(path: Path, config: dict) -> None:
    """tokenizer.json from the tiny GGUF vocabulary, plus a tokenizer_config.json."""
    Tokenizer.from_gguf_metadata(tiny_metadata())._backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def test_hf_dir_tokenizer(tmp_path: Path) -> None:
    write_hf_tokenizer(tmp_path, {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
                                  "add_bos_token": True,
                                  "chat_template": [{"name": "default", "template": CHATML},
                                                    {"name": "tool_use", "template": "x"}]})
    tok = Tokenizer.from_hf_dir(tmp_path, eos_token_ids=[0, 2])
    assert tok.bos_token_id == 1 and tok.eos_token_ids == [2, 0] and tok.add_bos
    assert tok.encode("hello")[0] == 1 and tok.chat_template == CHATML
    (tmp_path / "chat_template.jinja").write_text("{{ 'jinja file' }}")
    assert Tokenizer.from_hf_dir(tmp_path).apply_chat_template([]) == "jinja file"


def test_hf_dir_bos_from_post_processor(tmp_path: Path) -> None:
    """Llama 3 style: no add_bos_token in the config, the post-processor prepends BOS."""
    from tokenizers import processors

    backend = Tokenizer.from_gguf_metadata(tiny_metadata())._backend
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[
        ("<|im_start|>", 1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>"}))
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert tok.add_bos and tok.encode("hello")[:2] == [1, tok.encode("hello", add_special_tokens=False)[0]]
    assert tok.encode("hello").count(1) == 1


# ------------------------------------------------------------------------------ golden (default model)


@pytest.fixture(scope="module")
def default_pair() -> tuple[Tokenizer, object]:
    transformers = pytest.importorskip("transformers")
    from plait.loading.gguf_file import read_gguf
    from plait.loading.sources import resolve_model

    path = resolve_model(None)
    ours = Tokenizer.from_gguf_metadata(read_gguf(path).metadata)
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return ours, theirs


@pytest.mark.slow
def test_default_tokenizer_matches_transformers(default_pair: tuple) -> None:
    ours, theirs = default_pair
    for text in STRINGS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.bos_token_id == theirs.bos_token_id == 1
    assert ours.token_to_id("<|im_end|>") == theirs.eos_token_id == 2
    assert set(theirs.all_special_ids) <= ours.all_special_ids


@pytest.mark.slow
def test_default_chat_template_matches_transformers(default_pair: tuple) -> None:
    ours, theirs = default_pair
    conversations = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye 👋"}],
    ]
    for msgs in conversations:
        for gen in (True, False):
            want = theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            got = ours.apply_chat_template(msgs, add_generation_prompt=gen)
            assert got == want
            assert ours.encode(got, add_special_tokens=False) == theirs.encode(want, add_special_tokens=False)
