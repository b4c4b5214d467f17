"""Scoring a given continuation: the log-probability the model assigns to each of its tokens.

Uses the engine's `score(prompt, continuation)` when it has one (a prefill-only call); until then, falls back
to the public generate path: one request over prompt + continuation with `prompt_logprobs=0` and one generated
token, whose prompt logprobs at the continuation's positions are the answer. Both give the same numbers (the
fallback merely generates one extra token and skips the prefix cache, as prompt logprobs require).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plait.params import SamplingParams


@dataclass
class ContinuationScore:
    token_ids: list[int]
    token_logprobs: list[float]

    @property
    def logprob(self) -> float:
        return sum(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / len(self.token_logprobs) if self.token_logprobs else 0.0


def _ids(engine: Any, text_or_ids: Any, special: bool) -> list[int]:
    if isinstance(text_or_ids, str):
        return engine.tokenizer.encode(text_or_ids, add_special_tokens=special)
    return list(text_or_ids)


async def score_continuation(engine: Any, prompt: Any, continuation: Any) -> ContinuationScore:
    """Log-probabilities of `continuation`'s tokens after `prompt` (each text or token ids)."""
    if hasattr(engine, "score"):
        out = await engine.score(prompt, continuation)
        return ContinuationScore(list(out.token_ids), [float(x) for x in out.token_logprobs])
    prompt_ids = _ids(engine, prompt, special=True)
    cont_ids = _ids(engine, continuation, special=False)
    if not cont_ids:
        raise ValueError("continuation must not be empty")
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    final = None
    async for out in engine.generate(prompt_ids + cont_ids, params, output_kind="final"):
        final = out
    entries = final.prompt_logprobs[len(prompt_ids):]
    logprobs = [entry[tid].logprob for entry, tid in zip(entries, cont_ids)]
    return ContinuationScore(cont_ids, logprobs)
