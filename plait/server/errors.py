"""OpenAI's error format, and the mapping from every way a request can go wrong to a status code.

Real clients (the `openai` package, LangChain, LiteLLM) branch on the status code and read
`{"error": {"message", "type", "param", "code"}}`; a 422 or a bare 500 for bad input confuses them and hides which
parameter was wrong. So all bad input is a 400 that names the parameter, and FastAPI's own validation errors are
rewritten into that shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from plait.engine.async_llm import EngineDeadError, QueueFullError
from plait.params import SamplingParams

log = logging.getLogger("plait.server")

# SamplingParams fields: its ValueErrors start with the field's name.
_PARAM_FIELDS = sorted((f for f in SamplingParams.__dataclass_fields__ if f != "stop_strings"), key=len,
                       reverse=True)


class APIError(Exception):
    """An error the client should see, already in OpenAI's terms."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def timeout_error(seconds: float | None) -> APIError:
    return APIError(504, f"the request ran past the server's request timeout ({seconds} s) and was aborted",
                    type="timeout_error", code="request_timeout")


def from_value_error(exc: ValueError, renames: dict[str, str] | None = None,
                     prompt_param: str = "prompt") -> APIError:
    """A ValueError from SamplingParams or the engine's submit -> 400 naming the API parameter at fault.

    `renames` maps engine field names to this endpoint's names (chat's `logprobs` is `top_logprobs`).
    """
    message = str(exc)
    param: str | None = None
    if message.startswith("prompt (") and "max_tokens" in message or message.startswith("prompt + max_tokens"):
        param = "max_tokens"  # prompt fits, prompt + max_tokens does not: lowering max_tokens is the fix
    elif message.startswith("prompt"):
        param = prompt_param
    else:
        param = next((f for f in _PARAM_FIELDS if message.startswith(f)), None)
    if param is not None and renames:
        param = renames.get(param, param)
    return bad_request(message, param)


def from_engine_error(exc: BaseException, renames: dict[str, str] | None = None,
                      prompt_param: str = "prompt") -> APIError:
    """Map whatever submitting to / streaming from the engine raised."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(503, f"the server is overloaded: {exc}; retry later", type="server_overloaded",
                        code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), type="server_error", code="engine_dead")
    if isinstance(exc, ValueError):
        return from_value_error(exc, renames, prompt_param)
    log.exception("unexpected error while generating", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def _validation_param(errors: list[dict[str, Any]]) -> str | None:
    """The top-level body field named by pydantic's first error (None for a malformed body as a whole)."""
    for err in errors:
        loc = [part for part in err.get("loc", ()) if part != "body"]
        if loc and isinstance(loc[0], str):
            return loc[0]
    return None


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the server in OpenAI's body format; validation errors become 400, not 422."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return bad_request(_validation_message(errors), _validation_param(errors)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind,
                        headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()
