"""Property-based fuzz of the server's own OpenAPI document (schemathesis), against a tiny random-weight engine.

Every operation in /openapi.json gets schema-valid and schema-invalid requests (schemathesis' positive and
negative modes). Whatever comes in, the server must not answer 5xx, must answer only status codes and content
types the document declares, and 2xx bodies must match the declared response schemas.

Generation is cheap by construction: the engine's context is short, and a `map_body` hook lowers *valid* but
expensive values (large `max_tokens`/`n`, long prompt/message lists) to small ones. Invalid values (wrong types,
negatives, empty lists, missing fields) are never touched: they are the point of the fuzz. Examples are
derandomized with a fixed seed and no example database. That does not make the examples independent of test
order: Hypothesis also mixes in string and number constants from the local modules already imported (plait.*),
so a run after tests/bench draws different requests than a run alone. Every check must hold for any example.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the importorskip on purpose)
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

from plait.config import EngineConfig  # noqa: E402
from plait.engine.async_llm import AsyncLLM  # noqa: E402
from plait.engine.builder import build_engine  # noqa: E402
from plait.server import build_app  # noqa: E402

MODEL = "tiny"
MAX_TOKENS = 4  # generated tokens per choice, at most (valid larger values are lowered to this)
MAX_N = 2  # choices per prompt, at most
MAX_ITEMS = 3  # prompts in a prompt list / messages in a chat, at most
MAX_EXAMPLES = 60  # per operation and mode
MAX_MODEL_LEN = 64  # the engine's context: a request without max_tokens generates up to this many tokens
# schemathesis' ASGI transport stops reading an event stream after `max-stream-events` events (default 20),
# cancels the app and hands back a truncated body without `data: [DONE]`. A valid stream here is far longer: up
# to MAX_ITEMS prompts whose max_tokens may be absent (16) or null (the rest of the context). At most one event
# per generated token of each choice, plus chat's role chunk, the usage (or error) chunk and [DONE]: with this cap
# every stream is read whole, and its end checked.
MAX_STREAM_EVENTS = MAX_ITEMS * MAX_N * MAX_MODEL_LEN + 3
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def cap_body(context, body: Any) -> Any:
    """Lower valid-but-expensive values; leave everything invalid exactly as generated."""
    if not isinstance(body, dict):
        return body
    for key in ("max_tokens", "max_completion_tokens"):
        if _is_int(body.get(key)) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if _is_int(body.get("n")) and 1 <= body["n"] <= 128:  # 128 = protocol.MAX_N: above it stays invalid
        body["n"] = min(body["n"], MAX_N)
    for key in ("prompt", "messages"):
        if isinstance(body.get(key), list) and len(body[key]) > MAX_ITEMS:
            value = body[key]
            # a list of token ids stays a list of token ids; a list of prompts stays a list of prompts
            body[key] = value[:MAX_ITEMS] if not all(_is_int(v) for v in value) else value[:64]
    return body


OPERATIONS = ["GET /health", "GET /v1/models", "GET /v1/models/{model_id}", "POST /v1/completions",
              "POST /v1/chat/completions", "POST /tokenize", "POST /detokenize", "GET /metrics", "GET /version"]


@pytest.fixture(scope="module")
def api_schema(tokenizer, tiny_model):
    """The schema as the app serves it, loaded over ASGI (calls go in-process, no socket)."""
    cfg, weights = tiny_model
    # A short context keeps chat's default max_tokens ("what still fits") and every prompt small.
    config = dict(dtype="float32", kv_cache_memory=4 << 20, max_model_len=MAX_MODEL_LEN)
    engine = AsyncLLM(_prebuilt=build_engine(EngineConfig(**config), cfg, weights, tokenizer), **config)
    try:
        run_config = schemathesis.Config.from_dict({"max-stream-events": MAX_STREAM_EVENTS})
        schema = schemathesis.openapi.from_asgi("/openapi.json", build_app(engine, MODEL), config=run_config)
        schema.hook("map_body")(cap_body)
        yield schema
    finally:
        engine.shutdown()


def test_fuzz_covers_every_operation(api_schema):
    assert sorted(op.ok().label for op in api_schema.get_all_operations()) == sorted(OPERATIONS)


# Negative mode only where there is something to break: the bodies (a path string or no input has no invalid
# value in JSON Schema terms, and Hypothesis would report the strategy unsatisfiable).
@pytest.mark.parametrize("label,mode", [(label, GenerationMode.POSITIVE) for label in OPERATIONS]
                         + [(label, GenerationMode.NEGATIVE) for label in OPERATIONS if label.startswith("POST")])
def test_openapi_fuzz(api_schema, label, mode):
    """No 5xx, only declared status codes and content types, 2xx bodies as declared, for any request."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            # A stream the transport cut short has lost its end: say so, rather than blame the server's framing.
            assert not response.stream_cut_short, "the test transport cut this stream; raise MAX_STREAM_EVENTS"
            assert_sse_framing(response.text)

    check()


def assert_sse_framing(text: str) -> None:
    """Every event is `data: <JSON object>`, and the stream ends with `data: [DONE]`."""
    events = [e for e in text.split("\n\n") if e]
    assert events and events[-1] == "data: [DONE]", text[-200:]
    for event in events[:-1]:
        assert event.startswith("data: ") and isinstance(json.loads(event[len("data: "):]), dict), event


@pytest.mark.parametrize("label,body", [
    ("POST /v1/completions", {"prompt": "hi", "max_tokens": 2, "stream": True}),
    ("POST /v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                   "stream": True}),
])
def test_sse_stream_matches_declared_schema(api_schema, label, body):
    operation = api_schema.find_operation_by_label(label)
    case = operation.Case(body=body, media_type="application/json")
    case.call_and_validate(checks=CHECKS)


def test_longest_stream_is_read_to_its_end(api_schema):
    """The longest stream the fuzz can ask for (every prompt, every choice, the whole context) arrives whole,
    ending in [DONE]. With schemathesis' default cap of 20 events the transport cut such a stream short, and
    test_openapi_fuzz failed on the missing [DONE] whenever the examples (which depend on the modules earlier
    tests imported) included one."""
    operation = api_schema.find_operation_by_label("POST /v1/completions")
    body = {"prompt": ["0"] * MAX_ITEMS, "n": MAX_N, "max_tokens": None, "ignore_eos": True, "stream": True}
    case = operation.Case(body=body, media_type="application/json")
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    assert not response.stream_cut_short
    assert_sse_framing(response.text)
    events = [e for e in response.text.split("\n\n") if e]
    assert len(events) > 20  # longer than schemathesis' default cap, or this test proves nothing
    assert len(events) <= MAX_STREAM_EVENTS, len(events)
