"""Structured-output overhead: output tok/s of JSON-schema-constrained requests against free ones, same run.

  python -m plait.bench.structured [--model M] [--batches 1,32] [--output-len 64] [--reps 2]

For each batch size B, B free requests and B constrained ones are timed alternately (free, constrained, free,
...) on the same prompts, so both see the same machine load. Both generate exactly --output-len tokens: the
free ones ignore EOS, the constrained ones follow a schema (an array of at least 100 records with strings,
integers, enums and nested objects) that cannot end sooner, so the batch stays full and the difference is the
per-step cost of the grammar (mask, mask application, matcher advance) and nothing else. The time spent in the
grammar's mask and advance calls is reported as well.
"""

from __future__ import annotations

import argparse
import json
import time

from plait.params import SamplingParams

RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string"},
        "kind": {"enum": ["person", "robot", "cat"]},
        "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["street", "zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "city", "kind", "address"],
    "additionalProperties": False,
}
SCHEMA = {"type": "array", "items": RECORD, "minItems": 100}
PROMPT = "Write a JSON list of people, each with a name, age, city, kind and address:\n"


def _timed(state, name: str, totals: dict[str, float]) -> None:
    """Wrap state.<name> to accumulate its wall time (the grammar's share of a step)."""
    inner = getattr(state, name)

    def wrapper(*args, **kw):
        start = time.perf_counter()
        try:
            return inner(*args, **kw)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(state, name, wrapper)


def run(model: str | None, batches: list[int], output_len: int, reps: int) -> list[dict]:
    from plait.engine.llm import LLM

    llm = LLM(model, max_num_seqs=max(batches))
    totals: dict[str, float] = {}
    state = llm.engine.runner.structured
    for name in ("masks", "advance"):
        _timed(state, name, totals)
    free = SamplingParams(max_tokens=output_len, temperature=0.7, seed=0, ignore_eos=True)
    constrained = SamplingParams(max_tokens=output_len, temperature=0.7, seed=0, structured_outputs={"json": SCHEMA})
    llm.generate([PROMPT], constrained, use_tqdm=False)  # warm-up: compiles the schema, builds the tokenizer map
    rows = []
    for batch in batches:
        prompts = [PROMPT + f"({i})" for i in range(batch)]
        times = {"free": [], "json": []}
        tokens = {"free": 0, "json": 0}
        grammar_s = 0.0
        for _ in range(reps):
            for label, params in (("free", free), ("json", constrained)):
                totals.clear()
                start = time.perf_counter()
                outs = llm.generate(prompts, params, use_tqdm=False)
                times[label].append(time.perf_counter() - start)
                tokens[label] = sum(len(o.outputs[0].token_ids) for o in outs)
                if label == "json":
                    grammar_s += sum(totals.values())
                    assert all(o.outputs[0].finish_reason == "length" for o in outs)
        best = {k: tokens[k] / min(v) for k, v in times.items()}
        rows.append({"batch": batch, "output_len": output_len, "free_tok_s": round(best["free"], 1),
                     "json_tok_s": round(best["json"], 1), "ratio": round(best["json"] / best["free"], 3),
                     "grammar_ms_per_step": round(1e3 * grammar_s / (reps * output_len), 3),
                     "free_s": [round(t, 2) for t in times["free"]], "json_s": [round(t, 2) for t in times["json"]]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model (default: plait's default model)")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--reps", type=int, default=2, help="alternating free/constrained runs per batch size")
    args = p.parse_args(argv)
    run(args.model, [int(b) for b in args.batches.split(",")], args.output_len, args.reps)


if __name__ == "__main__":
    main()
