"""The frontend half of output handling: the engine's new tokens -> text, stop strings, logprobs, RequestOutput.

The engine core sends only what changed each step (`EngineOutput`). A `RequestState` per request accumulates it
once (token ids, logprob dicts, incrementally decoded text) and builds a `RequestOutput` only when its reader asks
for one, so a reader that falls behind costs O(its output), never O(steps x output). Stop strings are found here;
the caller of `process` tells the engine to end those samples (`EngineCore.finish_sample`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from plait.core.engine_output import EngineOutput, RawLogprobs
from plait.engine.detokenizer import IncrementalDetokenizer
from plait.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from plait.params import SamplingParams

OUTPUT_KINDS = ("delta", "cumulative", "final")


class Tokenizer(Protocol):
    def decode(self, ids, skip_special_tokens: bool = True) -> str: ...

    def id_to_token_text(self, token_id: int) -> str: ...


@dataclass
class _Sample:
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    sent_tokens: int = 0  # how much a delta reader has already been given
    sent_logprobs: int = 0
    versions: list[tuple[int, str | int | None]] = field(default_factory=list)  # (first token, weight version)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class RequestState:
    """Everything the frontend knows about one request (n samples over one prompt)."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                 tokenizer: Tokenizer) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.tokenizer = tokenizer
        want_logprobs = params.logprobs is not None
        self.samples = [
            _Sample(IncrementalDetokenizer(tokenizer, prompt_token_ids, params.stop_strings,
                                           params.include_stop_str_in_output, params.skip_special_tokens),
                    logprobs=[] if want_logprobs else None, cumulative_logprob=0.0 if want_logprobs else None)
            for _ in range(params.n)]
        self.prompt_logprobs: list[PositionLogprobs | None] | None = None
        self.num_cached_tokens = 0
        self.created = time.monotonic()
        self.metrics: dict[str, float] = {}
        self.weight_version: str | int | None = None

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.samples)

    def process(self, out: EngineOutput) -> list[tuple[int, str]]:
        """Take one step's news. Returns (sample index, stop string) for each sample that a stop string ended
        while the engine still runs it: the caller must end those in the engine."""
        to_finish = []
        self.num_cached_tokens = out.num_cached_tokens
        if out.queue_time is not None:
            self.metrics["queue_time"] = out.queue_time
        if out.prompt_logprobs:
            if self.prompt_logprobs is None:
                self.prompt_logprobs = []
            for position, entry in out.prompt_logprobs:  # positions before the first computed one stay None
                self.prompt_logprobs.extend([None] * (position - len(self.prompt_logprobs)))
                self.prompt_logprobs.append(self._logprob_dict(entry))
        for delta in out.samples:
            sample = self.samples[delta.index]
            if sample.finished:
                continue  # a stop string ended it here first; the engine's later news is moot
            stop = None
            if delta.token_ids:
                self.weight_version = out.weight_version
                if not sample.versions or sample.versions[-1][1] != out.weight_version:
                    sample.versions.append((len(sample.token_ids), out.weight_version))
            for i, token in enumerate(delta.token_ids):
                self.metrics.setdefault("first_token_time", time.monotonic() - self.created)
                sample.token_ids.append(token)
                if delta.logprobs is not None and sample.logprobs is not None:
                    entry = delta.logprobs[i]
                    sample.logprobs.append(self._logprob_dict(entry))
                    sample.cumulative_logprob += entry[0][1]
                stop = sample.detokenizer.add(token, stop_allowed=len(sample.token_ids) > self.params.min_tokens)
                if stop is not None:
                    break
            if stop is not None:
                sample.finish_reason, sample.stop_reason = "stop", stop
                if delta.finish_reason is None:
                    to_finish.append((delta.index, stop))
            elif delta.finish_reason is not None:
                sample.finish_reason, sample.stop_reason = delta.finish_reason, delta.stop_reason
            if sample.finished:
                sample.detokenizer.flush()
        if self.finished:
            self.metrics.setdefault("e2e_time", time.monotonic() - self.created)
        return to_finish

    def has_unsent(self) -> bool:
        """Some sample holds tokens no 'delta' output has handed out yet."""
        return any(len(s.token_ids) > s.sent_tokens for s in self.samples)

    def _logprob_dict(self, entry: RawLogprobs) -> PositionLogprobs:
        decode = self.tokenizer.id_to_token_text
        return {tid: Logprob(lp, rank, decode(tid)) for tid, lp, rank in entry}

    def output(self, kind: str = "final") -> RequestOutput:
        """The request as its reader wants it: 'delta' (new since the last delta), 'cumulative' or 'final'
        (everything so far; 'final' is meant for finished requests)."""
        outputs = []
        for index, s in enumerate(self.samples):
            if kind == "delta":
                text = s.detokenizer.take()
                token_ids = s.token_ids[s.sent_tokens:]
                logprobs = None if s.logprobs is None else s.logprobs[s.sent_logprobs:]
                # Segments as offsets into this delta's token_ids.
                versions = [(max(at - s.sent_tokens, 0), v) for i, (at, v) in enumerate(s.versions)
                            if i + 1 == len(s.versions) or s.versions[i + 1][0] > s.sent_tokens]
                versions = versions if token_ids else []
                s.sent_tokens, s.sent_logprobs = len(s.token_ids), len(s.logprobs or ())
            else:
                text, token_ids = s.detokenizer.text, list(s.token_ids)
                logprobs = None if s.logprobs is None else list(s.logprobs)
                versions = list(s.versions)
            outputs.append(CompletionOutput(index, text, token_ids, s.finish_reason, s.stop_reason, logprobs,
                                            s.cumulative_logprob, versions))
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
            outputs=outputs, finished=self.finished, prompt_logprobs=self.prompt_logprobs,
            num_cached_tokens=self.num_cached_tokens, metrics=dict(self.metrics),
            weight_version=self.weight_version)
