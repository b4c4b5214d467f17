"""Tokenizer: text <-> token ids, special tokens and the chat template, for one model.

A thin wrapper over the `tokenizers` library (Rust, fast) plus a jinja2 renderer for chat
templates. It can be built from a HuggingFace directory (`tokenizer.json` and friends) or from the
metadata of a GGUF file, which carries the vocabulary and merges but no `tokenizer.json`, so there
we assemble the byte-level BPE pipeline ourselves.

BOS is added by this class, never by the backend's post-processor: one rule (`add_bos`) for both
sources, and a prompt rendered by a chat template that already starts with BOS can be encoded with
`add_special_tokens=False`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2
    import tokenizers

# GGUF token types (llama.cpp's llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4

# Tokens llama.cpp treats as end-of-generation whatever the metadata says (llama-vocab.cpp).
_EOG_TEXTS = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
    "_<EOT>", "<|end_of_text|>", "<｜end▁of▁sentence｜>",
}

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (the regexes llama.cpp and HF use).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_GPT2_PRES = {None, "default", "gpt2", "gpt-2", "smollm"}


class Tokenizer:
    """Encode/decode text and render chat templates for one model."""

    def __init__(
        self,
        backend: "tokenizers.Tokenizer",
        *,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        add_bos: bool,
        chat_template: str | None,
    ) -> None:
        self._backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_ids = list(dict.fromkeys(eos_token_ids))  # ordered, unique
        self.add_bos = add_bos and bos_token_id is not None
        self.chat_template = chat_template
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()
        self.all_special_ids: set[int] = {i for i, tok in added.items() if tok.special}
        self.all_special_ids.update(self.eos_token_ids)
        if bos_token_id is not None:
            self.all_special_ids.add(bos_token_id)
        self._compiled_template: Any = None

    # ------------------------------------------------------------------------------ encode / decode

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> ids; with `add_special_tokens`, BOS is prepended when the model wants it."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos:
            ids.insert(0, self.bos_token_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` for many texts at once (the backend tokenizes them in parallel)."""
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        prefix = [self.bos_token_id] if add_special_tokens and self.add_bos else []
        return [prefix + e.ids for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token_text(self, token_id: int) -> str:
        """The decoded text of one token (a lone partial UTF-8 byte shows as U+FFFD)."""
        return self._backend.decode([token_id], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token spelled as in the vocabulary (e.g. '<|im_end|>'), or None."""
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary spelling of a token (byte-level BPE: 'Ġhello'), or None."""
        return self._backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_token_id is None else self._backend.id_to_token(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return self._backend.id_to_token(self.eos_token_ids[0]) if self.eos_token_ids else None

    # ---------------------------------------------------------------------------------- chat template

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kw: Any) -> str:
        """Render `messages` with the model's chat template, as HF's `apply_chat_template(tokenize=False)`.

        Extra keyword arguments (tools, documents, enable_thinking, ...) reach the template as variables.
        """
        if self.chat_template is None:
            raise ValueError("this model has no chat template; pass a plain prompt instead of messages")
        if self._compiled_template is None:
            self._compiled_template = _compile_template(self.chat_template)
        variables = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "", **kw}
        return self._compiled_template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables
        )

    # ------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> "Tokenizer":
        """Build from a GGUF file's `tokenizer.ggml.*` metadata: byte-level BPE ('gpt2'), or Gemma's
        SentencePiece BPE ('llama' in a gemma3 file)."""
        model = meta.get("tokenizer.ggml.model")
        arch = meta.get("general.architecture")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        chat_template = meta.get("tokenizer.chat_template")
        if model == "llama" and arch == "gemma3":
            from plait.loading.spm_tokenizer import GEMMA3_CHAT_TEMPLATE, gemma_sentencepiece

            from plait.loading.sources import default_cache_dir

            backend = gemma_sentencepiece(tokens, types, default_cache_dir() / "tokenizers")
            # Base-model files carry no template; the Gemma 3 turn format is the same for all of them.
            chat_template = chat_template or GEMMA3_CHAT_TEMPLATE
        elif model == "gpt2":
            backend = _byte_level_bpe(tokens, types, meta.get("tokenizer.ggml.merges") or [],
                                      meta.get("tokenizer.ggml.pre"))
        else:
            raise NotImplementedError(
                f"GGUF tokenizer model {model!r} (architecture {arch!r}) is not supported: plait builds byte-level "
                "BPE ('gpt2') tokenizers, and Gemma 3's SentencePiece one, from GGUF metadata. Load the model's "
                "HuggingFace directory instead."
            )

        eos = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        eos += [i for i, (t, ty) in enumerate(zip(tokens, types)) if t in _EOG_TEXTS and ty == _CONTROL]
        return cls(
            backend,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=[i for i in eos if i is not None],
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=chat_template,
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path, eos_token_ids: Sequence[int] = ()) -> "Tokenizer":
        """Build from `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`) in `path`.

        `eos_token_ids` (from config.json / generation_config.json) are added to the tokenizer's own EOS.
        """
        import tokenizers

        path = Path(path)
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}

        def special_id(key: str) -> int | None:
            tok = cfg.get(key)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            return None if tok is None else backend.token_to_id(tok)

        bos = special_id("bos_token")
        eos = [special_id("eos_token"), *eos_token_ids]
        if "add_bos_token" in cfg:
            add_bos = bool(cfg["add_bos_token"])
        else:  # Llama 3 style: the post-processor prepends BOS and the config says nothing
            probe = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos is not None and probe[:1] == [bos] != backend.encode("a", add_special_tokens=False).ids[:1]
        return cls(
            backend,
            bos_token_id=bos,
            eos_token_ids=[i for i in eos if i is not None],
            add_bos=add_bos,
            chat_template=_hf_chat_template(path, cfg),
        )


def _byte_level_bpe(tokens: list[str], types: list[int], merges: list[str], pre: str | None) -> "tokenizers.Tokenizer":
    """A GPT-2 style byte-level BPE tokenizer from a GGUF vocabulary."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    byte_spelling = _bytes_to_unicode()
    vocab = {}
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        # Normal tokens are spelled in the byte alphabet; a stray one written as raw text is re-spelled.
        if ty not in (_CONTROL, _USER_DEFINED) and not set(tok) <= alphabet:
            tok = "".join(byte_spelling[b] for b in tok.encode("utf-8"))
        vocab.setdefault(tok, i)
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = Backend(models.BPE(vocab, merge_pairs, fuse_unk=False))

    if pre in _SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        if pre not in _GPT2_PRES:
            warnings.warn(f"unknown GGUF pre-tokenizer {pre!r}; splitting text like GPT-2", stacklevel=3)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        # SmolLM splits every digit apart before the GPT-2 regex (its tokenizer.json does the same).
        backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                                 if pre == "smollm" else byte_level)
    if pre in ("qwen2", "deepseek-r1-qwen"):
        backend.normalizer = normalizers.NFC()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    return backend


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _hf_chat_template(path: Path, cfg: dict) -> str | None:
    """The default chat template of an HF directory: chat_template.jinja, else tokenizer_config.json."""
    jinja_file = path / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text()
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t["name"]: t["template"] for t in template}
        return named.get("default", next(iter(named.values()), None))
    return template


def _compile_template(source: str) -> "jinja2.Template":
    """Compile a chat template the way transformers does: sandboxed, trimmed blocks, HF helpers."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # jinja's own tojson escapes HTML characters, which templates do not expect
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)
