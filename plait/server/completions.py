"""POST /v1/completions: text completion in OpenAI's legacy format (echo, per-token logprobs, several prompts).

Each prompt is one engine request with `n` choices; choice `index` is `prompt_index * n + choice`, as in
OpenAI's API. Streams and non-streaming responses are built from the same delta outputs, so both observe
the same latency metrics and both abort the engine request when the client leaves.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from plait.outputs import PositionLogprobs, RequestOutput
from plait.server.errors import bad_request, from_engine_error, from_value_error, timeout_error
from plait.server.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
                                   Usage)
from plait.server.streaming import SSE_DONE, Generation, ServerContext, merged, respond, sse
from plait.server.weight_versions import VersionTracker, delta_segments


def top_k(position: PositionLogprobs, k: int) -> list:
    """The k most likely entries of one position (the chosen token is only there when it is among them)."""
    return sorted(position.values(), key=lambda lp: (-lp.logprob, lp.rank))[:k]


@dataclass
class _LogprobWriter:
    """Builds OpenAI completion logprobs incrementally; text_offset runs on across stream chunks."""

    tokenizer: Any
    k: int
    offset: int = 0

    def block(self, token_ids: list[int], positions: list[PositionLogprobs | None]) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for tid, pos in zip(token_ids, positions):
            entry = pos.get(tid) if pos else None
            text = entry.decoded_token if entry is not None else self.tokenizer.id_to_token_text(tid)
            out.tokens.append(text)
            out.text_offset.append(self.offset)
            self.offset += len(text)
            out.token_logprobs.append(None if entry is None else entry.logprob)
            top = None if pos is None else {lp.decoded_token: lp.logprob for lp in top_k(pos, self.k)}
            out.top_logprobs.append(top)
        return out


@dataclass
class _Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    echoed: bool = False


def _prompts(prompt: Any) -> list[Any]:
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise bad_request("prompt must not be empty", "prompt")
    return prompts


class _Completion:
    """State of one /v1/completions call while it runs."""

    def __init__(self, ctx: ServerContext, req: CompletionRequest, prompts: list[Any]) -> None:
        self.ctx, self.req, self.prompts = ctx, req, prompts
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.choices = [_Choice() for _ in range(len(prompts) * req.n)]
        k = req.logprobs
        self.writers = [_LogprobWriter(ctx.engine.tokenizer, k) for _ in self.choices] if k is not None else None
        self.usage = Usage()
        self.created = int(time.time())
        self.versions = VersionTracker(len(self.choices), ctx.engine)

    def echo_text(self, prompt_index: int, out: RequestOutput) -> str:
        prompt = self.prompts[prompt_index]
        return prompt if isinstance(prompt, str) else self.ctx.engine.tokenizer.decode(out.prompt_token_ids)

    def apply(self, prompt_index: int, out: RequestOutput) -> list[CompletionChoice]:
        """Fold one delta output in; returns the choice deltas it carries (for streaming)."""
        deltas = []
        for c in out.outputs:
            idx = prompt_index * self.req.n + c.index
            choice = self.choices[idx]
            if choice.finish_reason is not None:
                continue
            text, logprobs = c.text, None
            writer = self.writers[idx] if self.writers is not None else None
            if self.req.echo and not choice.echoed:
                choice.echoed = True
                echo = self.echo_text(prompt_index, out)
                if writer is not None:
                    ids = out.prompt_token_ids
                    logprobs = writer.block(ids, list(out.prompt_logprobs or [None] * len(ids)))
                    writer.offset = len(echo)  # offsets index the returned text, whatever the tokens decode to
                text = echo + text
            if writer is not None:
                generated = writer.block(c.token_ids, c.logprobs or [])
                logprobs = generated if logprobs is None else _concat(logprobs, generated)
            if not (text or c.token_ids or c.finish_reason):
                continue
            self.versions.add(idx, c, out.weight_version)
            choice.text += text
            choice.token_ids += c.token_ids
            if logprobs is not None:
                choice.logprobs = logprobs if choice.logprobs is None else _concat(choice.logprobs, logprobs)
            choice.finish_reason, choice.stop_reason = c.finish_reason, c.stop_reason
            deltas.append(CompletionChoice(index=idx, text=text, logprobs=logprobs, finish_reason=c.finish_reason,
                                           stop_reason=c.stop_reason, weight_versions=delta_segments(c)))
        if out.finished:
            completion = sum(len(self.choices[prompt_index * self.req.n + c.index].token_ids) for c in out.outputs)
            self.usage.add(len(out.prompt_token_ids), completion, out.num_cached_tokens)
        return deltas

    def chunk(self, choices: list[CompletionChoice]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.ctx.model_name,
                "choices": [c.model_dump() for c in choices], "usage": None, "weight_version": self.versions.latest}

    async def collect(self, gens: list[Generation]) -> CompletionResponse:
        async for i, out in merged(gens):
            self.apply(i, out)
        if any(g.timed_out for g in gens):
            raise timeout_error(self.ctx.request_timeout)
        return CompletionResponse(
            id=self.id, model=self.ctx.model_name, usage=self.usage, weight_version=self.versions.latest,
            choices=[CompletionChoice(index=i, text=c.text, logprobs=c.logprobs, finish_reason=c.finish_reason,
                                      stop_reason=c.stop_reason, weight_versions=self.versions.whole(i))
                     for i, c in enumerate(self.choices)])

    async def stream(self, gens: list[Generation]) -> AsyncIterator[str]:
        try:
            async for i, out in merged(gens):
                deltas = self.apply(i, out)
                if deltas:
                    yield sse(self.chunk(deltas))
            if any(g.timed_out for g in gens):
                yield sse(timeout_error(self.ctx.request_timeout).body())
            elif self.req.stream_options is not None and self.req.stream_options.include_usage:
                yield sse(dict(self.chunk([]), usage=self.usage.model_dump()))
        except Exception as exc:  # noqa: BLE001 - the status line is gone; report in-band, as vLLM does
            yield sse(from_engine_error(exc).body())
        yield SSE_DONE


def _concat(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(tokens=a.tokens + b.tokens, token_logprobs=a.token_logprobs + b.token_logprobs,
                              top_logprobs=a.top_logprobs + b.top_logprobs, text_offset=a.text_offset + b.text_offset)


async def create_completion(ctx: ServerContext, req: CompletionRequest, raw: Request) -> Response | CompletionResponse:
    ctx.check_model(req.model)
    req.check_common(ctx.engine.vocab_size)
    ctx.check_priority(req.priority)
    if req.suffix:
        raise bad_request("suffix is not supported", "suffix")
    prompts = _prompts(req.prompt)
    prompt_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
    try:
        params = req.to_sampling_params(req.max_tokens, req.logprobs, prompt_logprobs)
    except ValueError as exc:
        raise from_value_error(exc) from None
    return await respond(ctx, raw, prompts, params, _Completion(ctx, req, prompts), req.stream,
                         from_engine_error)
