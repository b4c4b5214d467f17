"""The `scaling` body field of /v1/chat/completions and /v1/completions: answer with a test-time scaling strategy.

A request whose JSON body has a `scaling` object (e.g. {"strategy": "asc", "max_samples": 16}) is routed to the
handlers here instead of the plain ones: a small ASGI middleware peeks at the body and rewrites the path to
/v1/scaling/..., so the plain handlers stay untouched and auth, error handlers and metrics apply as usual. The
response is an ordinary completion whose single choice is the chosen sample's text; `usage.completion_tokens`
counts every token generated for it (aborted samples included); a `scaling` object lists samples used and the
votes. Streaming with `scaling` is refused (the answer exists only once the vote is over), as is n > 1.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Optional

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse

from plait.scaling.answers import EXTRACTORS
from plait.scaling.result import ScalingResult
from plait.scaling.spec import STRATEGIES, build_strategy
from plait.server.chat import render_prompt
from plait.server.errors import bad_request, from_engine_error, from_value_error, timeout_error
from plait.server.protocol import ChatCompletionRequest, CompletionRequest
from plait.server.streaming import ClientGone, ServerContext, run_until_disconnect

PATHS = {"/v1/chat/completions": "/v1/scaling/chat/completions",
         "/v1/completions": "/v1/scaling/completions"}
MAX_BODY = 16 << 20  # bodies larger than this are passed through unread (they are not scaling requests we serve)


class ScalingChatRequest(ChatCompletionRequest):
    scaling: Optional[dict[str, Any]] = None


class ScalingCompletionRequest(CompletionRequest):
    scaling: Optional[dict[str, Any]] = None


class ScalingRouter:
    """ASGI middleware: POSTs to the two generation paths whose JSON body has "scaling" go to /v1/scaling/..."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more, size = [], True, 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False) and size <= MAX_BODY
        body = b"".join(chunks)
        replayed = [{"type": "http.request", "body": body, "more_body": False}] if not more else \
            [{"type": "http.request", "body": body, "more_body": True}]
        if not more and _has_scaling(body):
            scope = dict(scope, path=PATHS[scope["path"]], raw_path=PATHS[scope["path"]].encode())
        await self.app(scope, _replay(replayed, receive), send)


def _has_scaling(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("scaling") is not None


def _replay(messages: list[dict], then: Any = None) -> Any:
    queue = list(messages)

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}
    return receive


def _strategy(scaling: Any) -> tuple[Any, str]:
    if not isinstance(scaling, dict):
        raise bad_request("scaling must be an object like {\"strategy\": \"asc\", \"max_samples\": 16}", "scaling")
    params = dict(scaling)
    name = params.pop("strategy", None)
    extract = params.pop("extract", "last_number")
    if name is None:
        raise bad_request(f"scaling.strategy is required ({', '.join(sorted(STRATEGIES))})", "scaling.strategy")
    if extract not in EXTRACTORS:
        raise bad_request(f"scaling.extract must be one of {sorted(EXTRACTORS)}, got {extract!r}", "scaling.extract")
    try:
        return build_strategy(name, params, field="scaling.strategy"), extract
    except (ValueError, TypeError) as exc:
        param = "scaling.strategy" if "must be one of" in str(exc) else "scaling"
        raise bad_request(str(exc), param) from None


def _check(ctx: ServerContext, req: Any) -> None:
    ctx.check_model(req.model)
    req.check_common(ctx.engine.engine.vocab_size)
    if req.stream:
        raise bad_request("stream is not supported with scaling: the answer exists only once the strategy decides",
                          "stream")
    if req.n != 1:
        raise bad_request("n must be 1 with scaling (the strategy decides how many samples to draw)", "n")


async def _solve(ctx: ServerContext, raw: Request, strategy: Any, prompt: Any, params: Any, extract: str,
                 seed: int | None, renames: dict | None, prompt_param: str) -> ScalingResult:
    """Run the strategy; a client that disconnects, or the request timeout, cancels it (aborting its samples)."""
    work = strategy.solve(ctx.engine, prompt, params=params, extract=extract, seed=seed or 0)
    if ctx.request_timeout is not None:
        work = asyncio.wait_for(work, ctx.request_timeout)
    try:
        return await run_until_disconnect(raw, work)
    except asyncio.TimeoutError:
        raise timeout_error(ctx.request_timeout) from None
    except ValueError as exc:
        raise from_value_error(exc, renames, prompt_param) from None
    except Exception as exc:  # noqa: BLE001 - queue full, engine dead: mapped to their status
        raise from_engine_error(exc, renames, prompt_param) from None


def _scaling_body(result: ScalingResult) -> dict[str, Any]:
    return {"strategy": result.strategy, "answer": result.answer, "samples_used": result.samples_used,
            "samples_launched": result.samples_launched, "stopped_early": result.stopped_early,
            "votes": result.votes, "generated_tokens": result.generated_tokens, "wall_s": round(result.wall_s, 4),
            "details": result.details,
            "samples": [{"index": s.index, "answer": s.answer, "num_tokens": s.num_tokens, "score": s.score,
                         "mean_logprob": s.mean_logprob, "finish_reason": s.finish_reason}
                        for s in result.samples]}


def _usage(prompt_len: int, result: ScalingResult) -> dict[str, Any]:
    return {"prompt_tokens": prompt_len, "completion_tokens": result.generated_tokens,
            "total_tokens": prompt_len + result.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": 0}}


def _finish_reason(result: ScalingResult) -> str:
    for s in result.samples:
        if s.text == result.text:
            return s.finish_reason or "stop"
    return "stop"


def install_scaling(app: FastAPI, ctx: ServerContext) -> None:
    """Mount the scaling handlers and the body-peeking router (call before auth middleware is added, so auth
    stays the outermost layer)."""
    router = APIRouter()

    @router.post("/v1/scaling/chat/completions", include_in_schema=False)
    async def chat(body: ScalingChatRequest, request: Request) -> JSONResponse:
        _check(ctx, body)
        strategy, extract = _strategy(body.scaling)
        prompt = render_prompt(ctx, body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is None:
            max_tokens = ctx.default_max_tokens(len(prompt))
        renames = {"max_tokens": "max_completion_tokens"} if body.max_completion_tokens is not None else None
        try:
            params = body.to_sampling_params(max_tokens, None)
        except ValueError as exc:
            raise from_value_error(exc, renames, "messages") from None
        try:
            result = await _solve(ctx, request, strategy, prompt, params, extract, body.seed, renames, "messages")
        except ClientGone:
            return JSONResponse(None, status_code=499)  # nobody is listening; the samples are already aborted
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": ctx.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": None, "finish_reason": _finish_reason(result)}],
            "usage": _usage(len(prompt), result), "scaling": _scaling_body(result)})

    @router.post("/v1/scaling/completions", include_in_schema=False)
    async def completion(body: ScalingCompletionRequest, request: Request) -> JSONResponse:
        _check(ctx, body)
        strategy, extract = _strategy(body.scaling)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise bad_request("scaling answers one prompt per request; send prompts one at a time", "prompt")
            prompt = prompt[0]
        if body.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if body.logprobs is not None or body.echo:
            raise bad_request("logprobs and echo are not supported with scaling", "logprobs")
        try:
            params = body.to_sampling_params(body.max_tokens, None)
            prompt_len = len(ctx.engine.encode(prompt)[1])
        except ValueError as exc:
            raise from_value_error(exc) from None
        try:
            result = await _solve(ctx, request, strategy, prompt, params, extract, body.seed, None, "prompt")
        except ClientGone:
            return JSONResponse(None, status_code=499)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": ctx.model_name,
            "choices": [{"index": 0, "text": result.text, "logprobs": None,
                         "finish_reason": _finish_reason(result)}],
            "usage": _usage(prompt_len, result), "scaling": _scaling_body(result)})

    app.include_router(router)
    app.add_middleware(ScalingRouter)
