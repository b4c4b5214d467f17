"""POST /v1/chat/completions: messages through the model's chat template, answers in OpenAI's chat format.

The prompt is rendered and tokenized here (without adding BOS: the template carries its own special tokens, as
`LLM.chat` does), so the prompt length is known and the default `max_tokens` can be "what still fits".
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from plait.outputs import PositionLogprobs, RequestOutput
from plait.server.completions import top_k
from plait.server.errors import bad_request, from_engine_error, from_value_error, timeout_error
from plait.server.protocol import (ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs,
                                   ResponseMessage, TokenLogprob, TopLogprob, Usage)
from plait.server.streaming import SSE_DONE, Generation, ServerContext, merged, respond, sse
from plait.server.weight_versions import VersionTracker, delta_segments

# Engine field names -> chat API names, for error messages' `param`.
_RENAMES = {"logprobs": "top_logprobs", "max_tokens": "max_completion_tokens"}


def render_prompt(ctx: ServerContext, req: ChatCompletionRequest) -> list[int]:
    if not req.messages:
        raise bad_request("messages must not be empty", "messages")
    try:
        text = ctx.engine.tokenizer.apply_chat_template([m.for_template() for m in req.messages],
                                                        add_generation_prompt=req.add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - a template's raise_exception or a missing template: bad input
        raise bad_request(f"messages could not be rendered with the chat template: {exc}", "messages") from None
    return ctx.engine.tokenizer.encode(text, add_special_tokens=False)


def _logprob_entries(positions: list[PositionLogprobs], token_ids: list[int], k: int) -> list[TokenLogprob]:
    entries = []
    for tid, pos in zip(token_ids, positions):
        chosen = pos[tid]
        entries.append(TokenLogprob(
            token=chosen.decoded_token, logprob=chosen.logprob, bytes=list(chosen.decoded_token.encode()),
            top_logprobs=[TopLogprob(token=lp.decoded_token, logprob=lp.logprob, bytes=list(lp.decoded_token.encode()))
                          for lp in top_k(pos, k)]))
    return entries


class _Chat:
    """State of one /v1/chat/completions call while it runs."""

    def __init__(self, ctx: ServerContext, req: ChatCompletionRequest) -> None:
        self.ctx, self.req = ctx, req
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.k = (req.top_logprobs or 0) if req.logprobs else None
        self.text = [""] * req.n
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(req.n)]
        self.tokens = [0] * req.n
        self.finish: list[tuple[str | None, Any]] = [(None, None)] * req.n
        self.usage = Usage()
        self.versions = VersionTracker(req.n, ctx.engine)

    def apply(self, out: RequestOutput) -> list[dict[str, Any]]:
        """Fold one delta output in; returns the stream choice deltas it carries."""
        deltas = []
        for c in out.outputs:
            i = c.index
            if self.finish[i][0] is not None or not (c.text or c.token_ids or c.finish_reason):
                continue
            entries = _logprob_entries(c.logprobs or [], c.token_ids, self.k) if self.k is not None else None
            self.versions.add(i, c, out.weight_version)
            self.text[i] += c.text
            self.tokens[i] += len(c.token_ids)
            if entries:
                self.logprobs[i] += entries
            self.finish[i] = (c.finish_reason, c.stop_reason)
            delta = {"content": c.text} if c.text or not c.finish_reason else {}
            deltas.append({"index": i, "delta": delta,
                           "logprobs": None if entries is None else {"content": [e.model_dump() for e in entries]},
                           "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
                           "weight_versions": delta_segments(c)})
        if out.finished:
            self.usage.add(len(out.prompt_token_ids), sum(self.tokens), out.num_cached_tokens)
        return deltas

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.ctx.model_name, "choices": choices, "usage": None,
                "weight_version": self.versions.latest}

    async def collect(self, gens: list[Generation]) -> ChatCompletionResponse:
        async for _, out in merged(gens):
            self.apply(out)
        if gens[0].timed_out:
            raise timeout_error(self.ctx.request_timeout)
        return ChatCompletionResponse(id=self.id, created=self.created, model=self.ctx.model_name, usage=self.usage,
                                      weight_version=self.versions.latest,
                                      choices=[ChatChoice(index=i, message=ResponseMessage(content=self.text[i]),
                                                          logprobs=None if self.k is None else
                                                          ChatLogprobs(content=self.logprobs[i]),
                                                          finish_reason=self.finish[i][0],
                                                          stop_reason=self.finish[i][1],
                                                          weight_versions=self.versions.whole(i))
                                               for i in range(self.req.n)])

    async def stream(self, gens: list[Generation]) -> AsyncIterator[str]:
        try:
            yield sse(self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None} for i in range(self.req.n)]))
            async for _, out in merged(gens):
                deltas = self.apply(out)
                if deltas:
                    yield sse(self.chunk(deltas))
            if gens[0].timed_out:
                yield sse(timeout_error(self.ctx.request_timeout).body())
            elif self.req.stream_options is not None and self.req.stream_options.include_usage:
                yield sse(dict(self.chunk([]), usage=self.usage.model_dump()))
        except Exception as exc:  # noqa: BLE001 - the status line is gone; report in-band, as vLLM does
            yield sse(from_engine_error(exc, {"logprobs": "top_logprobs"}, "messages").body())
        yield SSE_DONE


async def create_chat_completion(ctx: ServerContext, req: ChatCompletionRequest,
                                 raw: Request) -> Response | ChatCompletionResponse:
    ctx.check_model(req.model)
    req.check_common(ctx.engine.vocab_size)
    ctx.check_priority(req.priority)
    if req.tools:
        raise bad_request("tools (function calling) are not supported by this server", "tools")
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true", "top_logprobs")
    prompt = render_prompt(ctx, req)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = ctx.default_max_tokens(len(prompt))
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    # Errors name the parameter the client actually sent.
    renames = _RENAMES if req.max_completion_tokens is not None else {"logprobs": "top_logprobs"}
    try:
        params = req.to_sampling_params(max_tokens, logprobs)
    except ValueError as exc:
        raise from_value_error(exc, renames, "messages") from None
    return await respond(ctx, raw, [prompt], params, _Chat(ctx, req), req.stream,
                         lambda exc: from_engine_error(exc, renames, "messages"))
