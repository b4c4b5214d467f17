"""Compare llguidance and xgrammar on this machine with plait's default tokenizer (SmolLM2, vocab 49152).

Measures: JSON-schema compile time (cold, per schema), and per-step token-mask time for a batch of 1 and 32
matchers walking a valid JSON document token by token. xgrammar is not a plait dependency (it pulls torch,
triton and transformers); install it aside to run this, e.g.
  pip install --no-deps --target /tmp/xgr xgrammar apache-tvm-ffi
  PYTHONPATH=/tmp/xgr python scripts/grammar_libs_bench.py
"""

from __future__ import annotations

import json
import time

import torch

from plait.loading.gguf_file import read_gguf
from plait.loading.sources import resolve_model
from plait.loading.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 4},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "address"],
}
DOC = json.dumps({"name": "Alice", "age": 31, "tags": ["a", "c"], "address": {"city": "Paris", "zip": "75001"},
                  "score": 4.5})


def schema_variant(i: int) -> dict:
    s = json.loads(json.dumps(SCHEMA))
    s["properties"][f"extra{i}"] = {"type": "string"}  # a distinct schema each time: no cache hit
    return s


def bench_llguidance(tok: Tokenizer, steps: list[int]) -> dict:
    import llguidance
    import llguidance.torch as llt

    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok._backend.to_str(), n_vocab=tok.vocab_size, eos_token=tok.eos_token_ids)
    tok_s = time.perf_counter() - t0
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        m = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(schema_variant(i)))
        m.compute_bitmask()  # first mask: includes lazy lexer work
        times.append(time.perf_counter() - t0)
        assert not m.is_error(), m.get_error()
    out = {"tokenizer_s": tok_s, "compile_ms": 1e3 * sorted(times)[2]}
    executor = llguidance.LLExecutor()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    for batch in (1, 32):
        matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(batch)]
        mask = llt.allocate_token_bitmask(batch, tok.vocab_size)
        t0 = time.perf_counter()
        for t in steps:
            llt.fill_next_token_bitmask_par(executor, [(m, i) for i, m in enumerate(matchers)], mask)
            for m in matchers:
                assert m.consume_token(t), m.get_error()
        out[f"mask_ms_b{batch}"] = 1e3 * (time.perf_counter() - t0) / len(steps)
    return out


def bench_xgrammar(tok: Tokenizer, steps: list[int]) -> dict:
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    t0 = time.perf_counter()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok._backend)
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=tok.vocab_size, stop_token_ids=tok.eos_token_ids)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    tok_s = time.perf_counter() - t0
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema_variant(i)))
        m = xgr.GrammarMatcher(compiled)
        mask = xgr.allocate_token_bitmask(1, tok.vocab_size)
        m.fill_next_token_bitmask(mask, 0)
        times.append(time.perf_counter() - t0)
    out = {"tokenizer_s": tok_s, "compile_ms": 1e3 * sorted(times)[2]}
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    for batch in (1, 32):
        matchers = [xgr.GrammarMatcher(compiled) for _ in range(batch)]
        mask = xgr.allocate_token_bitmask(batch, tok.vocab_size)
        t0 = time.perf_counter()
        for t in steps:
            for i, m in enumerate(matchers):
                m.fill_next_token_bitmask(mask, i)
            for m in matchers:
                assert m.accept_token(t)
        out[f"mask_ms_b{batch}"] = 1e3 * (time.perf_counter() - t0) / len(steps)
    return out


def main() -> None:
    torch.set_num_threads(2)
    tok = Tokenizer.from_gguf_metadata(read_gguf(resolve_model(None)).metadata)
    steps = tok.encode(DOC, add_special_tokens=False)
    print(f"document: {len(steps)} tokens")
    for name, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        try:
            print(name, {k: round(v, 3) for k, v in fn(tok, steps).items()})
        except ImportError as e:
            print(name, "not installed:", e)


if __name__ == "__main__":
    main()
