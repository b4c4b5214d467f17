"""The `scaling` body field end to end, through the official openai client (`extra_body`) over loopback HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.test_server import MODEL, Server, make_async, wait_idle


@pytest.fixture(scope="module")
def server(tokenizer, tiny_model):
    srv = Server(make_async(tokenizer, tiny_model))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    yield server.client()
    wait_idle(server.engine)  # every sample finished or aborted, every KV block free


def test_chat_with_scaling_returns_the_chosen_answer_and_counts_every_token(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=8, temperature=1.0,
        seed=3, extra_body={"scaling": {"strategy": "sc", "n": 6}, "ignore_eos": True})
    body = r.model_dump()
    scaling = body["scaling"]
    assert scaling["strategy"] == "sc:n=6" and scaling["samples_used"] == 6 and len(scaling["samples"]) == 6
    assert r.usage.completion_tokens == 6 * 8 == scaling["generated_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert sum(scaling["votes"].values()) == sum(s["answer"] is not None for s in scaling["samples"])
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    # Same seed, same samples, same answer text.
    again = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=8, temperature=1.0,
        seed=3, extra_body={"scaling": {"strategy": "sc", "n": 6}, "ignore_eos": True})
    assert again.choices[0].message.content == r.choices[0].message.content


def test_completion_with_adaptive_scaling_stays_within_budget(client):
    r = client.completions.create(model=MODEL, prompt="Q: 1 + 1?\nA:", max_tokens=6, temperature=1.0,
                                  extra_body={"scaling": {"strategy": "asc", "max_samples": 5, "batch": 2},
                                              "ignore_eos": True})
    scaling = r.model_dump()["scaling"]
    assert 1 <= scaling["samples_launched"] <= 5 and scaling["samples_used"] <= scaling["samples_launched"]
    assert r.usage.completion_tokens == scaling["generated_tokens"] >= 6 * scaling["samples_used"]


def test_completion_with_step_search_stays_within_its_token_budget(client):
    r = client.completions.create(model=MODEL, prompt="Q: 1 + 1?\nA:", max_tokens=12, temperature=1.0, seed=2,
                                  extra_body={"scaling": {"strategy": "search", "k": 2, "tokens": 20,
                                                          "step_max_tokens": 4}, "ignore_eos": True})
    scaling = r.model_dump()["scaling"]
    assert scaling["strategy"].startswith("search:k=2") and scaling["details"]["expansions"] >= 1
    assert 0 < r.usage.completion_tokens == scaling["generated_tokens"] <= 20


def test_without_scaling_the_plain_endpoint_answers(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    assert "scaling" not in r.model_dump() or r.model_dump().get("scaling") is None
    assert r.usage.completion_tokens == 4 or r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("extra, param", [
    ({"scaling": {"strategy": "magic"}}, "scaling.strategy"),
    ({"scaling": {"strategy": "asc", "max_samples": 0}}, "scaling"),
    ({"scaling": {"strategy": "sc", "bogus": 1}}, "scaling"),
    ({"scaling": {"strategy": "search", "k": 0}}, "scaling"),
    ({"scaling": {"n": 4}}, "scaling.strategy"),
    ({"scaling": {"strategy": "sc", "extract": "first"}}, "scaling.extract"),
    ({"scaling": "asc"}, "scaling"),
    ({"scaling": {"strategy": "sc"}, "n": 2}, "n"),
    ({"scaling": {"strategy": "sc"}, "temperature": -1.0}, "temperature"),
])
def test_bad_scaling_requests_are_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       extra_body=extra)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param


def test_streaming_with_scaling_is_refused(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
        "scaling": {"strategy": "sc", "n": 2}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    wait_idle(server.engine)


def test_api_key_still_guards_scaling_requests(tokenizer, tiny_model):
    srv = Server(make_async(tokenizer, tiny_model), api_key="sekrit")
    try:
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "scaling": {"strategy": "sc", "n": 2}})
        assert r.status_code == 401
        ok = httpx.post(srv.url + "/v1/completions", headers={"Authorization": "Bearer sekrit"},
                        json={"prompt": "x", "max_tokens": 2, "scaling": {"strategy": "sc", "n": 2}})
        assert ok.status_code == 200 and ok.json()["scaling"]["samples_used"] == 2
    finally:
        srv.stop()
