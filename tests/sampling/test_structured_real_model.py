"""Structured output on the real default model (SmolLM2-135M-Instruct): every output follows its schema, and the
model's own preferences show through (a greedy choice answers the question)."""

from __future__ import annotations

import json
import re

import jsonschema_rs
import pytest

from plait import LLM, SamplingParams

pytestmark = pytest.mark.slow

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4},
        "pet": {"enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "city", "pet"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm():
    return LLM(max_num_seqs=32)


def test_json_schema_outputs_validate(llm):
    validator = jsonschema_rs.validator_for(PERSON)
    question = [{"role": "user", "content": "Describe a fictional person as JSON with name, age, city, hobbies "
                                            "and pet."}]
    # max_tokens covers the schema's longest output (200 characters of strings, up to 4 byte tokens each, plus the
    # structure), so ending on "length" means the grammar failed to close the object, never an unlucky sample: a
    # seeded sample at 0.8 may well fill its strings with emoji, one byte token at a time.
    params = [SamplingParams(max_tokens=1000, temperature=0.0 if i == 0 else 0.8, seed=i,
                             structured_outputs={"json": PERSON}) for i in range(32)]
    outs = llm.chat([question] * len(params), params, use_tqdm=False)
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", c.text
        assert validator.is_valid(json.loads(c.text)), c.text


def test_choice_regex_and_free_neighbours(llm):
    ask = [{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]
    choice = SamplingParams(max_tokens=8, temperature=0.0, structured_outputs={"choice": ["yes", "no"]})
    date = SamplingParams(max_tokens=20, temperature=0.0,
                          structured_outputs={"regex": r"(19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]"})
    free = SamplingParams(max_tokens=24, temperature=0.0)
    when = [{"role": "user", "content": "When did the Apollo 11 landing happen? Give the date as YYYY-MM-DD."}]
    alone = llm.chat([ask], free, use_tqdm=False)[0].outputs[0].token_ids
    outs = llm.chat([ask, when, ask], [choice, date, free], use_tqdm=False)
    assert outs[0].outputs[0].text == "yes"
    assert re.fullmatch(r"(19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]", outs[1].outputs[0].text)
    assert outs[2].outputs[0].token_ids == alone  # the free request is untouched by its constrained neighbours
