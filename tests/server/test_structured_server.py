"""Structured output over HTTP: OpenAI's response_format (json_object, json_schema through the official client's
`chat.completions.parse`) and vLLM's `structured_outputs` extra body field, on chat and completions."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from tests.server.test_server import Server, make_async, wait_idle


class Pet(BaseModel):
    # Bounded fields: a random model always finishes the object.
    name: str = Field(max_length=6)
    kind: Literal["cat", "dog"]
    age: int = Field(ge=0, le=30)
    toys: list[Literal["ball", "rope"]] = Field(max_length=2)


@pytest.fixture(scope="module")
def server(tokenizer, tiny_model):
    srv = Server(make_async(tokenizer, tiny_model))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    yield server.client()
    wait_idle(server.engine)


def test_chat_completions_parse_with_pydantic_model(client):
    for seed in range(4):
        resp = client.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "a pet?"}],
                                             response_format=Pet, max_completion_tokens=80, seed=seed)
        choice = resp.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Pet), choice.message.content


def test_json_object_and_schema_on_completions(client):
    schema = {**Pet.model_json_schema(), "additionalProperties": False}  # strict mode requires it
    resp = client.completions.create(model="tiny", prompt="pet:", max_tokens=80, n=3, seed=1,
                                     extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                         "name": "pet", "schema": schema, "strict": True}}})
    for choice in resp.choices:
        assert choice.finish_reason == "stop"
        Pet.model_validate_json(choice.text)
    resp = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "json"}],
                                          response_format={"type": "json_object"}, max_tokens=48, seed=2)
    text = resp.choices[0].message.content
    assert text.startswith("{")
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_structured_outputs_extra_body_regex_choice_grammar(client):
    resp = client.completions.create(model="tiny", prompt="id:", max_tokens=20, n=4, seed=3,
                                     extra_body={"structured_outputs": {"regex": r"[A-Z]{2}-[0-9]{3}"}})
    assert all(re.fullmatch(r"[A-Z]{2}-[0-9]{3}", c.text) for c in resp.choices)
    resp = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "ok?"}],
                                          max_tokens=20, n=4, seed=4,
                                          extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert all(c.message.content in ("yes", "no") and c.finish_reason == "stop" for c in resp.choices)
    resp = client.completions.create(model="tiny", prompt="x", max_tokens=20, seed=5, stream=True,
                                     extra_body={"structured_outputs": {"grammar": 'root ::= "x" [0-9] [0-9]?'}})
    text = "".join(chunk.choices[0].text for chunk in resp if chunk.choices)
    assert re.fullmatch(r"x[0-9]{1,2}", text), text


@pytest.mark.parametrize("body, param", [
    ({"structured_outputs": {"regex": "a(("}}, "structured_outputs"),
    ({"structured_outputs": {"json": {"type": "nope"}}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
])
def test_bad_structured_input_is_400_naming_the_field(server, body, param):
    for path, base in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        for stream in (False, True):
            r = httpx.post(server.url + path, json={**base, **body, "max_tokens": 4, "stream": stream}, timeout=30)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param, r.text
    wait_idle(server.engine)
