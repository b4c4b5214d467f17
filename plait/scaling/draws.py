"""Where a strategy's samples come from: a live engine, or samples stored earlier (replay).

Strategies never call the engine directly; they open a `Draws` for one question and ask it for k more samples at a
time. Live draws submit one request with n=k (the children share the prompt's KV) and yield the samples in index
order as they finish; closing the stream early aborts the rest, and the tokens they had generated are still counted.
Replay draws hand out stored samples in their stored order, so every strategy is compared on the same draws.
Yielding in index order (not finishing order) is deliberate: finishing order favours short completions, which
would bias an adaptive vote; in index order a live run and a replay of the same draws decide identically.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, AsyncIterator, Protocol

from plait.outputs import CompletionOutput
from plait.params import SamplingParams
from plait.scaling.answers import Extractor, get_extractor
from plait.scaling.result import Sample

DEFAULT_PARAMS = SamplingParams(temperature=0.8, max_tokens=256, logprobs=0)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from (seed, parts...) by hashing, so rounds and questions get unrelated, reproducible streams."""
    digest = hashlib.blake2b(repr((seed,) + parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Draws(Protocol):
    """Samples of one question (`prompt`). `available` is how many more can be drawn (None: unlimited)."""

    prompt: Any
    prompt_tokens: int
    generated_tokens: int
    launched: int

    @property
    def available(self) -> int | None: ...

    def stream(self, k: int) -> AsyncIterator[Sample]: ...


class LiveDraws:
    def __init__(self, engine: Any, prompt: Any, params: SamplingParams, extract: Extractor, seed: int) -> None:
        self.engine, self.prompt, self.params, self.extract, self.seed = engine, prompt, params, extract, seed
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.launched = 0
        self._round = 0

    @property
    def available(self) -> int | None:
        return None

    async def stream(self, k: int) -> AsyncIterator[Sample]:
        if k < 1:
            return
        seed = derive_seed(self.seed, self._round)
        self._round += 1
        params = replace(self.params, n=k, seed=seed)
        first_index = self.launched
        self.launched += k
        gen = self.engine.generate(self.prompt, params, output_kind="cumulative")
        last = None
        finished: dict[int, CompletionOutput] = {}
        next_index = 0
        try:
            async for out in gen:
                last = out
                for c in out.outputs:
                    if c.finished:
                        finished.setdefault(c.index, c)
                while next_index in finished:
                    yield self._sample(first_index + next_index, finished[next_index])
                    next_index += 1
        finally:
            await gen.aclose()  # aborts whatever is still running
            if last is not None:
                self.prompt_tokens += len(last.prompt_token_ids)
                self.generated_tokens += sum(len(c.token_ids) for c in last.outputs)

    def _sample(self, index: int, c: CompletionOutput) -> Sample:
        mean_lp = None
        if c.cumulative_logprob is not None and c.token_ids:
            mean_lp = c.cumulative_logprob / len(c.token_ids)
        return Sample(index=index, text=c.text, answer=self.extract(c.text), num_tokens=len(c.token_ids),
                      mean_logprob=mean_lp, finish_reason=c.finish_reason)


class LiveSampler:
    """Opens live draws on an AsyncLLM (or anything with its `generate`). logprobs are always recorded (the
    sampled token's only: cheap) so confidence-based strategies have them."""

    def __init__(self, engine: Any, params: SamplingParams | None = None, extract: Any = "last_number",
                 seed: int = 0) -> None:
        params = params or DEFAULT_PARAMS
        if params.logprobs is None:
            params = replace(params, logprobs=0)
        if params.n != 1:
            raise ValueError(f"params.n must be 1 (the strategy decides how many samples), got {params.n}")
        self.engine, self.params, self.extract, self.seed = engine, params, get_extractor(extract), seed
        self._opened = 0

    def open(self, prompt: Any) -> LiveDraws:
        self._opened += 1
        return LiveDraws(self.engine, prompt, self.params, self.extract, derive_seed(self.seed, self._opened))


class ReplayDraws:
    def __init__(self, prompt: Any, samples: list[Sample], prompt_tokens: int = 0) -> None:
        self.prompt = prompt
        self._samples = samples
        self._prompt_tokens_each = prompt_tokens
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.launched = 0

    @property
    def available(self) -> int | None:
        return len(self._samples) - self.launched

    async def stream(self, k: int) -> AsyncIterator[Sample]:
        if k > len(self._samples) - self.launched:
            raise ValueError(f"replay has {len(self._samples) - self.launched} stored samples left, asked for {k}")
        start = self.launched
        self.launched += k
        self.prompt_tokens += self._prompt_tokens_each
        for s in self._samples[start: start + k]:
            self.generated_tokens += s.num_tokens
            yield s


class ReplaySampler:
    """Draws from stored samples: `stored[question_key]` is the list of samples drawn for that question."""

    def __init__(self, stored: dict[Any, list[Sample]], prompt_tokens: dict[Any, int] | None = None) -> None:
        self.stored, self.prompt_tokens = stored, prompt_tokens or {}

    def open(self, prompt: Any) -> ReplayDraws:
        key = prompt if isinstance(prompt, str) else tuple(prompt)
        if key not in self.stored:
            raise ValueError("prompt has no stored samples to replay")
        return ReplayDraws(prompt, self.stored[key], self.prompt_tokens.get(key, 0))
