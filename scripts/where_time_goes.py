"""Split the time of decode steps into model layers, LM head and sampling (wall clock, via wrappers).

    python scripts/where_time_goes.py --model gemma3-270m --threads 1 --batches 1,8 --tokens 16

Used for docs/gemma3.md: with a 262k vocabulary the LM head is about half of a small-batch step.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    from plait import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype, num_threads=args.threads, max_num_seqs=64)
    runner = llm.engine.runner
    spent = {"layers": 0.0, "lm_head": 0.0, "sampling": 0.0}

    def timed(key, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - start
        return wrapper

    # Instance attributes shadow the methods the runner calls; nothing else changes.
    runner.model.forward = timed("layers", runner.model.forward)
    runner.model.compute_logits = timed("lm_head", runner.model.compute_logits)
    sample = runner.sampler.__call__
    runner.sampler = type("TimedSampler", (), {"__call__": staticmethod(timed("sampling", sample)),
                                               "top_logprobs": staticmethod(runner.sampler.top_logprobs)})()
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(batch)]
        llm.generate(prompts, SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)  # warm-up
        spent.update(dict.fromkeys(spent, 0.0))
        start = time.perf_counter()
        llm.generate(prompts, SamplingParams(max_tokens=args.tokens, min_tokens=args.tokens, temperature=0.8,
                                             seed=1), use_tqdm=False)
        total = time.perf_counter() - start
        parts = ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in spent.items())
        print(f"batch {batch}: {total:.2f} s for {args.tokens} tokens each: {parts}, "
              f"rest {total - sum(spent.values()):.2f} s")


if __name__ == "__main__":
    main()
