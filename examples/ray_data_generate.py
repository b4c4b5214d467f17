"""Generate over a dataset with Ray Data and plait engines (needs `pip install 'plait[ray]'`).

    python examples/ray_data_generate.py prompts.jsonl out/ --concurrency 2

prompts.jsonl has one JSON object per line with a "prompt" field; out/ receives Parquet files with the input
columns plus "generated_text" and "num_generated_tokens". Rows stream through `--concurrency` engine actors,
so the dataset never has to fit in memory. Without a path, ten made-up prompts are used and printed.
"""

from __future__ import annotations

import argparse

import ray

from plait import SamplingParams
from plait.distributed.data import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input", nargs="?", help="JSON-lines file with a 'prompt' field (default: a small demo)")
    parser.add_argument("output", nargs="?", help="directory for the Parquet output (default: print)")
    parser.add_argument("--concurrency", type=int, default=2, help="engine replicas (one per Ray Data actor)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per LLM.generate call")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default=None, help="default: smollm2-135m")
    args = parser.parse_args()

    ray.init()  # or ray.init(address="auto") on a cluster started with `ray start --head`
    if args.input:
        ds = ray.data.read_json(args.input)
    else:
        ds = ray.data.from_items([{"prompt": f"Write one sentence about the number {i}."} for i in range(10)])
    out = generate_dataset(ds, SamplingParams(max_tokens=args.max_tokens, temperature=0), model=args.model,
                           concurrency=args.concurrency, batch_size=args.batch_size, chat=True)
    if args.output:
        out.write_parquet(args.output)
    else:
        for row in out.take_all():
            print(f"{row['prompt']!r} -> {row['generated_text']!r}")


if __name__ == "__main__":
    main()
