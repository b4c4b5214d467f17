"""Scoring a given continuation: a prompt_logprobs request over prompt + continuation that wants logprobs only
for the continuation, so the prefix cache serves the prompt's full blocks (only the continuation and the block
holding the prompt's last token are computed)."""

from __future__ import annotations

from typing import Any

from plait.engine.prompts import encode_prompt, is_token_ids, normalize_batch
from plait.outputs import RequestOutput, ScoreOutput
from plait.params import SamplingParams


def encode_pair(tokenizer, prompt: Any, continuation: Any) -> tuple[list[int], int]:
    """-> (prompt + continuation token ids, index of the continuation's first token). The prompt is encoded as
    `generate` would (special tokens such as BOS included), the continuation without special tokens and on its
    own, so its tokens are exactly the ones scored."""
    _, prompt_ids = encode_prompt(tokenizer, prompt)
    if isinstance(continuation, str):
        cont_ids = tokenizer.encode(continuation, add_special_tokens=False) if continuation else []
    elif is_token_ids(continuation):
        cont_ids = list(continuation)
    else:
        raise ValueError(f"continuation must be a string or a list of token ids, got {type(continuation).__name__}")
    if not cont_ids:
        raise ValueError("continuation must not be empty")
    return prompt_ids + cont_ids, len(prompt_ids)


def score_params(start: int) -> SamplingParams:
    # One greedy token is sampled and thrown away: the request is an ordinary generation, nothing special-cased.
    return SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, prompt_logprobs=0,
                          prompt_logprobs_start=start)


def to_score(out: RequestOutput, start: int) -> ScoreOutput:
    ids = out.prompt_token_ids[start:]
    entries = (out.prompt_logprobs or [])[start:]
    if len(entries) != len(ids) or any(e is None for e in entries):
        raise RuntimeError(f"request {out.request_id} finished without all continuation logprobs")
    logprobs = [entry[tok].logprob for entry, tok in zip(entries, ids)]
    return ScoreOutput(ids, logprobs, float(sum(logprobs)), out.num_cached_tokens)


def pair_batch(prompts: Any, continuations: Any) -> list[tuple[Any, Any]]:
    """Pairs for `LLM.score`: one prompt and one continuation, one prompt and many continuations, or two lists of
    equal length."""
    if isinstance(continuations, str) or (is_token_ids(continuations) and len(continuations) > 0):
        conts = [continuations]
    elif isinstance(continuations, (list, tuple)):
        conts = list(continuations)
    else:
        raise ValueError(f"continuations must be a string, a list of token ids, or a list of those; got "
                         f"{type(continuations).__name__}")
    single_prompt = isinstance(prompts, str) or (is_token_ids(prompts) and len(prompts) > 0)
    if single_prompt:
        return [(prompts, c) for c in conts]
    prompt_list = normalize_batch(prompts)
    if len(prompt_list) != len(conts):
        raise ValueError(f"continuations has {len(conts)} entries for {len(prompt_list)} prompts")
    return list(zip(prompt_list, conts))


async def score_request(client: Any, prompt: Any, continuation: Any) -> ScoreOutput:
    """`score` for any engine client (plait/engine/protocol.py) that has `tokenizer` and `generate`: one
    request for prompt + continuation, logprobs for the continuation only."""
    ids, start = encode_pair(client.tokenizer, prompt, continuation)
    final = None
    async for out in client.generate(ids, score_params(start), output_kind="final"):
        final = out
    return to_score(final, start)
