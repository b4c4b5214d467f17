"""Structured output through the public API on a tiny random model: whatever the model wants, every output
follows its schema / regex / choice, and unconstrained neighbours are untouched."""

from __future__ import annotations

import json
import math
import re

import jsonschema_rs
import pytest

from plait import SamplingParams
from plait.sampling.structured_params import StructuredOutputsParams

# Bounded everywhere (string lengths, item counts, enums, integer ranges) so a random model always finishes.
NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "kind": {"enum": ["cat", "dog", 3, None]},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3},
        "owner": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9},
                                                   "roles": {"type": "array", "maxItems": 2,
                                                             "items": {"enum": ["r", "w"]}}},
                  "required": ["id"], "additionalProperties": False},
    },
    "required": ["name", "code", "age", "kind", "owner"],
    "additionalProperties": False,
}
# Random-model floats can run to many digits; the grammar allows them, so give room.
MAX_TOKENS = 160


def _texts(outs):
    return [c for o in outs for c in o.outputs]


def test_params_shape_errors_name_the_field():
    assert SamplingParams(structured_outputs={"regex": "a+"}).structured_outputs == StructuredOutputsParams(
        regex="a+")
    for bad, field in [({}, "structured_outputs must set exactly one"),
                       ({"regex": "a", "choice": ["a"]}, "structured_outputs must set exactly one"),
                       ({"choice": []}, "structured_outputs.choice"), ({"choice": ["a", 1]}, "structured_outputs.choice"),
                       ({"json": "{not json"}, "structured_outputs.json"), ({"json": 3}, "structured_outputs.json"),
                       ({"regex": ""}, "structured_outputs.regex"), ({"foo": 1}, "structured_outputs has unknown"),
                       ("a+", "structured_outputs must be")]:
        with pytest.raises(ValueError, match=re.escape(field)):
            SamplingParams(structured_outputs=bad)


@pytest.mark.parametrize("spec, field", [({"regex": "a(("}, "structured_outputs.regex"),
                                         ({"json": {"type": "foo"}}, "structured_outputs.json"),
                                         ({"grammar": "start: undefined_rule"}, "structured_outputs.grammar")])
def test_invalid_grammar_is_a_value_error_and_queues_nothing(make_engine, spec, field):
    llm = make_engine()
    with pytest.raises(ValueError, match=re.escape(field)):
        llm.generate(["x"], SamplingParams(max_tokens=4, structured_outputs=spec), use_tqdm=False)
    assert not llm.engine.has_unfinished() and llm.engine.scheduler.kv.all_blocks_free()


def test_nested_schema_every_sampled_output_validates(make_engine):
    llm = make_engine(max_num_seqs=32)
    validator = jsonschema_rs.validator_for(NESTED)
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=t, seed=i, top_k=k, repetition_penalty=rp,
                             structured_outputs={"json": NESTED})
              for i, (t, k, rp) in enumerate([(1.0, -1, 1.0), (1.5, -1, 1.0), (0.8, 50, 1.3), (0.0, -1, 1.0)] * 12)]
    outs = llm.generate(["Give me a record:"] * len(params), params, use_tqdm=False)
    for c in _texts(outs):
        assert c.finish_reason == "stop", c
        assert validator.is_valid(json.loads(c.text)), c.text
        assert llm.engine.tokenizer.eos_token_ids[0] not in c.token_ids  # the grammar ended it, not EOS
    assert llm.engine.runner.structured.compiler.num_compiled == 1  # one schema, compiled once
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_regex_choice_grammar_and_json_object(make_engine):
    llm = make_engine(max_num_seqs=32)
    regex = r"[0-9]{3}-[a-z]{2,4}( ok)?"
    choices = ["yes", "no", "maybe not", "\"quoted\" \\ back"]
    gbnf = 'root ::= "(" [a-c]{1,3} ")"'
    specs = [{"regex": regex}, {"choice": choices}, {"grammar": gbnf},
             {"grammar": 'start: "<" NUM ">"\nNUM: /[0-9]{1,4}/'}]
    params = [SamplingParams(max_tokens=40, temperature=1.0, seed=i, n=2, structured_outputs=specs[i % 4])
              for i in range(16)]
    outs = llm.generate(["Answer:"] * len(params), params, use_tqdm=False)
    for i, out in enumerate(outs):
        for c in out.outputs:
            assert c.finish_reason == "stop", c
            kind = i % 4
            if kind == 0:
                assert re.fullmatch(regex, c.text), c.text
            elif kind == 1:
                assert c.text in choices
            elif kind == 2:
                assert re.fullmatch(r"\([a-c]{1,3}\)", c.text), c.text
            else:
                assert re.fullmatch(r"<[0-9]{1,4}>", c.text), c.text
    # json_object: any object; a random model may not close it within max_tokens, but what it wrote is a prefix
    # the grammar allowed, and a finished one parses.
    outs = llm.generate(["{"] * 8, [SamplingParams(max_tokens=64, seed=i, structured_outputs={"json_object": True})
                                    for i in range(8)], use_tqdm=False)
    for c in _texts(outs):
        assert c.text.startswith("{")
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)


def test_free_requests_unchanged_by_constrained_neighbours(make_engine):
    llm = make_engine(max_num_seqs=16)
    free = [SamplingParams(max_tokens=12, temperature=0.0), SamplingParams(max_tokens=12, seed=7, logprobs=2),
            SamplingParams(max_tokens=12, seed=8, repetition_penalty=1.2, top_p=0.9)]
    prompts = ["The cat", "A dog", "Hello there"]
    alone = llm.generate(prompts, free, use_tqdm=False)
    mixed_params = free + [SamplingParams(max_tokens=30, seed=i, structured_outputs={"json": NESTED})
                           for i in range(5)]
    mixed = llm.generate(prompts + ["x"] * 5, mixed_params, use_tqdm=False)
    for a, m in zip(alone, mixed[:3]):
        assert a.outputs[0].token_ids == m.outputs[0].token_ids
        if a.outputs[0].logprobs is not None:
            for la, lm in zip(a.outputs[0].logprobs, m.outputs[0].logprobs):
                assert la.keys() == lm.keys()
                assert all(abs(la[t].logprob - lm[t].logprob) < 1e-5 for t in la)


def test_seeded_structured_is_reproducible_and_greedy_is_constrained_argmax(make_engine):
    llm = make_engine()
    spec = {"regex": r"[a-z]{2,6}"}
    first = llm.generate(["seed"], SamplingParams(max_tokens=10, seed=3, structured_outputs=spec), use_tqdm=False)
    again = llm.generate(["seed"], SamplingParams(max_tokens=10, seed=3, structured_outputs=spec), use_tqdm=False)
    assert first[0].outputs[0].token_ids == again[0].outputs[0].token_ids
    # Greedy + logprobs: the chosen token is rank 1 of the CONSTRAINED distribution, whose mass is all on
    # allowed tokens (the reported alternatives sum to <= 1 and only contain allowed continuations).
    out = llm.generate(["seed"], SamplingParams(max_tokens=10, temperature=0, logprobs=20,
                                                structured_outputs={"choice": ["alpha", "beta"]}), use_tqdm=False)
    c = out[0].outputs[0]
    assert c.text in ("alpha", "beta")
    first_step = c.logprobs[0]
    assert first_step[c.token_ids[0]].rank == 1
    finite = [lp.logprob for lp in first_step.values() if math.isfinite(lp.logprob)]
    # 'alpha' and 'beta' can start with only a handful of tokens ('a', 'al', 'alpha', 'b', 'be', ...): the top 20
    # hold every allowed one, so their probabilities sum to 1.
    assert len(finite) < 20
    assert sum(math.exp(x) for x in finite) == pytest.approx(1.0, abs=1e-4)


def test_min_tokens_and_ignore_eos_do_not_break_the_grammar(make_engine):
    llm = make_engine()
    out = llm.generate(["x"], SamplingParams(max_tokens=20, min_tokens=5, ignore_eos=True, seed=1,
                                             structured_outputs={"choice": ["ab", "cd"]}), use_tqdm=False)
    c = out[0].outputs[0]
    assert c.text in ("ab", "cd") and c.finish_reason == "stop"
