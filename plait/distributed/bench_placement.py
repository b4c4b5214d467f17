"""How much prefill work an offline split leaves the replicas: `python -m plait.distributed.bench_placement`.

Counts KV blocks the replicas must compute for a shuffled shared-prefix batch (each replica computes each
distinct full block of its share once, thanks to its prefix cache, plus each prompt's partial last block),
for one engine, a round-robin split and `split_by_prefix`. Pure bookkeeping: deterministic, no model, no Ray.
"""

from __future__ import annotations

import random
from typing import Sequence

from plait.distributed.placement import block_digests, split_by_prefix


def blocks_to_compute(prompts: Sequence[Sequence[int]], shares: list[list[int]], block_size: int = 16) -> int:
    total = 0
    for share in shares:
        seen: set[bytes] = set()
        for i in share:
            seen.update(block_digests(prompts[i], block_size))
            total += len(prompts[i]) % block_size > 0
        total += len(seen)
    return total


def main() -> None:
    rng = random.Random(0)
    print("| workload | N | one engine | round-robin | split_by_prefix | share sizes |")
    print("|---|---|---|---|---|---|")
    for groups, per, prefix, question in ((8, 8, 512, 32), (16, 4, 256, 64), (1, 64, 512, 32)):
        heads = [[rng.randrange(49152) for _ in range(prefix)] for _ in range(groups)]
        prompts = [heads[g] + [rng.randrange(49152) for _ in range(question)]
                   for g in range(groups) for _ in range(per)]
        rng.shuffle(prompts)
        costs = [len(p) + 128 for p in prompts]
        one = blocks_to_compute(prompts, [list(range(len(prompts)))])
        for n in (2, 4):
            round_robin = [list(range(k, len(prompts), n)) for k in range(n)]
            shares = split_by_prefix(prompts, costs, n)
            print(f"| {groups} groups x {per}, {prefix}-token prefix + {question} | {n} | {one} | "
                  f"{blocks_to_compute(prompts, round_robin)} | {blocks_to_compute(prompts, shares)} | "
                  f"{[len(s) for s in shares]} |")


if __name__ == "__main__":
    main()
