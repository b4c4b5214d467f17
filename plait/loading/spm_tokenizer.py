"""Gemma's SentencePiece BPE tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.model == "llama"`).

A GGUF file carries the vocabulary (pieces spelled with U+2581 for spaces) and scores, but no merges. The
`tokenizers` BPE model needs merges, so we derive them from the vocabulary the way transformers' GGUF loader does
for Gemma, which makes our token ids those of the HF reference on the same file:
  * a piece that is only spaces is stored as real spaces ("  "); it is respelled with U+2581 first,
  * every piece is cut into two in-vocabulary halves at every position; the pairs are ranked by the piece's
    position in the vocabulary (Gemma's scores do not follow its merge order; its token order does),
  * byte fallback (<0x0A> ...) for characters outside the vocabulary, spaces become U+2581, no prefix space.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tokenizers

_CONTROL, _USER_DEFINED = 3, 4
SPACE = "\u2581"

# Gemma 3's turn format (the template of Google's instruction-tuned Gemma 3 tokenizers, text parts only). A
# system message is folded into the first user turn, as Gemma has no system role.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


def derive_merges(tokens: list[str]) -> list[tuple[str, str]]:
    """Merges implied by a vocabulary whose order is its merge order (earlier pieces merge first).

    The same pairs, in the same order, as transformers' `generate_merges(vocab, {piece: -index})`: for each piece
    its in-vocabulary splits ordered by the halves' ids, then all pairs stably sorted by the piece's position,
    ties broken by longer left half, then longer right half.
    """
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs: list[tuple[int, int, int, str, str]] = []  # (rank of the piece, -len left, -len right, left, right)
    for piece, index in vocab.items():
        local = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        pairs.extend((index, -len(left), -len(right), left, right) for _, _, left, right in local)
    pairs.sort(key=lambda p: (p[0], p[1], p[2]))  # stable, like the reference's reversed sort on (-index, ...)
    return [(left, right) for _, _, _, left, right in pairs]


def cached_merges(tokens: list[str], cache_dir: Path | None) -> list[tuple[str, str]]:
    """derive_merges, remembered in `cache_dir` under a hash of the vocabulary: deriving them walks every split
    of 262k pieces (~2 s on an idle core), reading them back is a fraction of that."""
    if cache_dir is None:
        return derive_merges(tokens)
    key = hashlib.blake2b("\0".join(tokens).encode("utf-8"), digest_size=12).hexdigest()
    path = cache_dir / f"{key}.merges.json"
    try:
        return [tuple(pair) for pair in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError):
        pass
    merges = derive_merges(tokens)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(merges, ensure_ascii=False), encoding="utf-8")
        partial.replace(path)  # atomic: a concurrent reader sees the whole file or none
    except OSError:
        pass  # a read-only cache only costs the derivation next time
    return merges


def gemma_sentencepiece(tokens: list[str], types: list[int], cache_dir: Path | None = None) -> "tokenizers.Tokenizer":
    """The backend tokenizer of a Gemma GGUF vocabulary (see the module docstring); derived merges are cached
    in `cache_dir` when given."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    tokens = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    unk = "<unk>" if "<unk>" in vocab else None
    merges = cached_merges(tokens, cache_dir)
    backend = Backend(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", SPACE)
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    return backend
