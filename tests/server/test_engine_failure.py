"""The server when the engine fails: before a response (503 + unhealthy) and mid-stream (an OpenAI error event,
then [DONE]: a stream never simply stops)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.server.test_server import LONG, Server, make_async


def test_engine_death_gives_errors_and_unhealthy(tokenizer, tiny_model):
    engine = make_async(tokenizer, tiny_model)
    srv = Server(engine)
    try:
        def boom():
            raise RuntimeError("simulated device failure")

        engine.engine.step = boom
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        assert httpx.get(srv.url + "/health").status_code == 503
        assert httpx.post(srv.url + "/v1/completions", json={"prompt": "x"}).status_code == 503
    finally:
        srv.stop()


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": ["x", "y"], "n": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
])
def test_engine_death_mid_stream_ends_with_error_event_and_done(tokenizer, tiny_model, path, body):
    """The status line is gone once a stream has started, so a failure after the first chunks must still end the
    stream in-band: an error event in OpenAI's format, then [DONE]; never a stream that simply stops."""
    engine = make_async(tokenizer, tiny_model)
    srv = Server(engine)
    try:
        real_step, received = engine.engine.step, threading.Event()

        def step_or_die():
            if received.is_set():  # the client holds output already: now the engine fails
                raise RuntimeError("simulated device failure")
            return real_step()

        engine.engine.step = step_or_die
        events = []
        with httpx.stream("POST", srv.url + path, json={**body, "stream": True, **LONG}, timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    events.append(line)
                if len(events) == 2:  # chat: the role chunk and a first token; completions: two token chunks
                    received.set()
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
        assert all("choices" in c for c in chunks[:2])
        assert set(chunks[-1]) == {"error"} and chunks[-1]["error"]["code"] == "engine_dead"
        assert chunks[-1]["error"]["type"] == "server_error"
    finally:
        srv.stop()
