"""Turning what callers pass as a prompt into token ids, with clear errors for what is not a prompt."""

from __future__ import annotations

from typing import Any, Union

PromptInput = Union[str, list[int]]


def is_token_ids(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def normalize_batch(prompts: Any) -> list[PromptInput]:
    """A single prompt (text or token ids) or a list of them -> a list of prompts."""
    if isinstance(prompts, str) or (is_token_ids(prompts) and len(prompts) > 0):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        return list(prompts)
    raise ValueError(f"prompt must be a string, a list of token ids, or a list of those; got {type(prompts).__name__}")


def encode_prompt(tokenizer, prompt: Any) -> tuple[str | None, list[int]]:
    """-> (text or None, token ids). Raises ValueError naming `prompt` for anything else."""
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"prompt must be valid UTF-8 text: {exc}") from None
        if not prompt:
            raise ValueError("prompt must not be empty")
        return prompt, tokenizer.encode(prompt)
    if is_token_ids(prompt):
        if not prompt:
            raise ValueError("prompt must not be empty")
        return None, list(prompt)
    if isinstance(prompt, (bytes, bytearray)):
        raise ValueError("prompt must be a str (decode bytes to text first), not bytes")
    raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")


def params_per_prompt(sampling_params: Any, count: int) -> list:
    """None, one SamplingParams for all, or one per prompt -> a list of `count` SamplingParams."""
    from plait.params import SamplingParams

    if sampling_params is None:
        return [SamplingParams()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    params_list = list(sampling_params)
    if len(params_list) != count:
        raise ValueError(f"sampling_params has {len(params_list)} entries for {count} prompts")
    return params_list
