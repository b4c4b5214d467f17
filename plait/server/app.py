"""The OpenAI-compatible HTTP app over AsyncLLM (`build_app`) and the `plait serve` entry point (`serve`).

The server adds no scheduling of its own: every request goes straight to `AsyncLLM`, whose bounded pending
count (`max_waiting_requests`) is the server's back-pressure. What the server adds is the protocol (schemas,
SSE), the failure mapping (OpenAI error bodies, 400 not 422, 503 + Retry-After), abort on disconnect, auth,
metrics, and an orderly shutdown.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import logging
import os
from typing import Any, Iterator

import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

import plait
from plait.server.admin import install_admin_routes
from plait.server.chat import create_chat_completion
from plait.server.completions import create_completion
from plait.server.errors import APIError, bad_request, install_error_handlers
from plait.server.metrics import CONTENT_TYPE
from plait.server.scaling_routes import install_scaling
from plait.server.protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                                   CompletionResponse, DetokenizeRequest, DetokenizeResponse, ModelCard, ModelList,
                                   TokenizeRequest, TokenizeResponse)
from plait.server.streaming import ServerContext

log = logging.getLogger("plait.server")

DEFAULT_MODEL_NAME = "smollm2-135m"
SHUTDOWN_GRACE_S = 10.0  # in-flight requests get this long to finish on SIGINT/SIGTERM, then are aborted

_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "integer", "null"]}}}}}
_ERRORS = {code: {"description": desc, "content": {"application/json": {"schema": _ERROR_SCHEMA, "example": {
    "error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": None}}}}}
    for code, desc in ((400, "invalid parameters or body"), (401, "missing or wrong API key"),
                       (404, "unknown model"), (503, "queue full (see Retry-After) or engine dead"),
                       (504, "the request ran past --request-timeout"))}
# One server-sent event: `data: <JSON chunk>`, the last one `data: [DONE]`.
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
_STREAM = {200: {"content": {"text/event-stream": {"schema": _SSE_EVENT}},
                 "description": "JSON body, or with stream=true server-sent events ending in `data: [DONE]`"}}


class APIKeyMiddleware:
    """401 on /v1 without `Authorization: Bearer <key>`; checked before the body is parsed, in constant time."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                    type="authentication_error", code="invalid_api_key",
                                    headers={"WWW-Authenticate": "Bearer"}).response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(engine: Any, served_model_name: str, api_key: str | None = None,
              request_timeout: float | None = None, enable_priority: bool = False) -> FastAPI:
    """The FastAPI app for one engine client (plait.engine.protocol.EngineClient, e.g. AsyncLLM). The caller
    owns the engine (and shuts it down)."""
    ctx = ServerContext(engine, served_model_name, request_timeout, enable_priority)
    app = FastAPI(title="plait", version=plait.__version__,
                  description="OpenAI-compatible API over plait's AsyncLLM.")
    app.state.ctx = ctx
    for collector in getattr(engine, "metric_collectors", list)():  # a Ray router's per-replica gauges
        ctx.metrics.registry.register(collector)
    install_error_handlers(app)
    install_scaling(app, ctx)  # before auth is added, so auth stays the outermost layer
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.get("/health", response_class=Response,
             responses={200: {"description": "engine running (empty body)"},
                        503: {"description": "the engine loop died",
                              "content": {"application/json": {"schema": _ERROR_SCHEMA}}}})
    async def health() -> Response:
        detail = getattr(engine, "health_detail", None)  # a Ray router reports each replica
        if engine.is_running:
            return Response(status_code=200) if detail is None else JSONResponse(detail())
        return APIError(503, f"the engine loop is not running: {engine.error!r}", type="server_error",
                        code="engine_dead").response()

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=ctx.model_name, max_model_len=ctx.max_model_len)])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS)
    async def get_model(model_id: str) -> ModelCard:
        ctx.check_model(model_id)
        return ModelCard(id=ctx.model_name, max_model_len=ctx.max_model_len)

    @app.post("/v1/completions", response_model=CompletionResponse, responses={**_ERRORS, **_STREAM})
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await create_completion(ctx, body, request)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={**_ERRORS, **_STREAM})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await create_chat_completion(ctx, body, request)

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        ctx.check_model(body.model)
        tok = engine.tokenizer
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give exactly one of prompt or messages", "prompt")
        if body.messages is not None:
            try:
                text = tok.apply_chat_template([m.for_template() for m in body.messages],
                                               add_generation_prompt=body.add_generation_prompt)
            except Exception as exc:  # noqa: BLE001 - bad messages are bad input
                raise bad_request(f"messages could not be rendered: {exc}", "messages") from None
            ids = tok.encode(text, add_special_tokens=False)
        else:
            ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=ctx.max_model_len)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        ctx.check_model(body.model)
        vocab = engine.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise bad_request(f"tokens must be ids in [0, {vocab})", "tokens")
        return DetokenizeResponse(prompt=engine.tokenizer.decode(body.tokens))

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    install_admin_routes(app, ctx, api_key)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": plait.__version__})

    return app


def default_model_name(model: str | None) -> str:
    """What /v1/models reports when --served-model-name is not given: the model's file or directory name."""
    if not model:
        return DEFAULT_MODEL_NAME
    base = os.path.basename(os.path.normpath(model))
    return base[:-5] if base.endswith(".gguf") else base


def serve(args: argparse.Namespace, engine_kwargs: dict) -> int:
    """Load the engine, serve until SIGINT/SIGTERM, finish (or abort) in-flight requests, exit 0."""
    from plait.engine.async_llm import AsyncLLM

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = args.api_key or os.environ.get("PLAIT_API_KEY") or None
    from plait.distributed.serve import start_router, wants_router

    if wants_router(args):  # --data-parallel-size N: N replicas on Ray behind one router, same surface
        engine = start_router(args, engine_kwargs)
    else:
        engine = AsyncLLM(**engine_kwargs, max_waiting_requests=args.max_waiting_requests)
    name = args.served_model_name or default_model_name(engine_kwargs.get("model"))
    try:
        app = build_app(engine, name, api_key, args.request_timeout, getattr(args, "enable_priority", False))
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                timeout_graceful_shutdown=getattr(args, "shutdown_timeout", SHUTDOWN_GRACE_S))
        server = _Server(config)
        log.info("serving %r on http://%s:%d/v1 (auth %s)", name, args.host, args.port,
                 "on" if api_key else "off")
        try:
            server.run()
        except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
            return int(exc.code or 1)
        return 0 if server.started else 1
    finally:
        engine.shutdown()


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the signal after a graceful shutdown (which would make SIGTERM kill
    the process with status -15 instead of exiting 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if captured:
                log.info("shut down on signal %s", captured[0])
                captured.clear()
