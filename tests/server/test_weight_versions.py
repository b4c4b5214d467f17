"""The weight version in HTTP responses: `weight_version` on completion and chat responses and on every stream
chunk, per-choice `weight_versions` segments, and two segments for a choice that spans a 'continue' update.
Read through the official openai client (`model_extra`) and raw httpx."""

import json
import threading
import time

import httpx
import pytest

from tests.helpers import random_weights
from tests.server.test_server import LONG, MODEL, Server, make_async, wait_idle


@pytest.fixture
def srv(tokenizer, tiny_model):
    server = Server(make_async(tokenizer, tiny_model))
    yield server
    server.stop()


def stream_chunks(url: str, body: dict) -> list[dict]:
    chunks = []
    with httpx.stream("POST", url, json=dict(body, stream=True), timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def rebuild(deltas: list[tuple[list, int]]) -> list[tuple[int, object]]:
    """Whole-choice segments from (delta segments, delta token count) pairs."""
    runs, offset = [], 0
    for segments, count in deltas:
        for at, version in segments:
            if not runs or runs[-1][1] != version:
                runs.append((offset + at, version))
        offset += count
    return runs


def test_versions_in_responses_and_chunks_through_the_openai_client_and_httpx(srv, tiny_model):
    client = srv.client()
    done = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, n=2, extra_body={"ignore_eos": True})
    assert done.model_extra["weight_version"] is None
    assert [c.model_extra["weight_versions"] for c in done.choices] == [[[0, None]], [[0, None]]]
    srv.engine.update_weights(random_weights(tiny_model[0], seed=1), "v2")
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                          extra_body={"ignore_eos": True})
    assert chat.model_extra["weight_version"] == "v2"
    assert chat.choices[0].model_extra["weight_versions"] == [[0, "v2"]]
    for stream in (client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True),
                   client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=4, stream=True)):
        chunks = list(stream)
        assert chunks and all(c.model_extra["weight_version"] == "v2" for c in chunks)
    raw = httpx.post(srv.url + "/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 3},
                     timeout=60).json()
    assert raw["weight_version"] == "v2" and raw["choices"][0]["weight_versions"] == [[0, "v2"]]
    chunks = stream_chunks(srv.url + "/v1/chat/completions", {"model": MODEL, "max_tokens": 3,
                                                              "messages": [{"role": "user", "content": "Hi"}]})
    assert all(c["weight_version"] == "v2" for c in chunks)
    tokens = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert all(t["weight_versions"] == [[0, "v2"]] for t in tokens)
    wait_idle(srv.engine)


def _update_after_tokens(engine, weights, version, tokens=5):
    base = engine.stats().generated_tokens
    deadline = time.monotonic() + 30
    while engine.stats().generated_tokens < base + tokens:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    engine.update_weights(weights, version, mode="continue")


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_choice_that_spans_a_continue_update_has_two_segments(srv, tiny_model, endpoint):
    w2 = random_weights(tiny_model[0], seed=1)
    body = dict(LONG, model=MODEL, max_tokens=200)
    if endpoint == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": "Hi"}]
    else:
        path, body["prompt"] = "/v1/completions", "Hello"
    # Streamed (raw httpx): chunk segments are offsets into each chunk.
    updater = threading.Thread(target=_update_after_tokens, args=(srv.engine, w2, "v2"))
    updater.start()
    chunks = stream_chunks(srv.url + path, body)
    updater.join()
    choices = [(c["choices"][0], c["weight_version"]) for c in chunks if c["choices"]]
    key = "delta" if endpoint == "chat" else None
    deltas = [(ch["weight_versions"], 1 if (ch[key].get("content") if key else ch["text"]) else 0)
              for ch, _ in choices if "weight_versions" in ch]
    runs = rebuild(deltas)
    assert [v for _, v in runs] == [None, "v2"] and 5 <= runs[1][0] < 200
    assert choices[-1][1] == "v2" and choices[0][1] is None
    # Non-streamed (openai client): whole-choice segments, the response's version is the latest token's.
    updater = threading.Thread(target=_update_after_tokens, args=(srv.engine, random_weights(tiny_model[0], 2),
                                                                  "v3"))
    updater.start()
    client = srv.client()
    if endpoint == "chat":
        resp = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=200,
                                              extra_body={"ignore_eos": True})
    else:
        resp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=200, extra_body={"ignore_eos": True})
    updater.join()
    runs = resp.choices[0].model_extra["weight_versions"]
    assert [v for _, v in runs] == ["v2", "v3"] and 5 <= runs[1][0] < 200
    assert resp.model_extra["weight_version"] == "v3"
    wait_idle(srv.engine)
