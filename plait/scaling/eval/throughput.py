"""Throughput of self-consistency: Q questions x k samples as one n=k request per question (children share the
prompt's KV) against the same Q x k samples as independent n=1 requests, generated tokens per second, one run."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, Sequence

from plait.params import SamplingParams
from plait.scaling.consistency import SelfConsistency
from plait.scaling.draws import derive_seed


async def compare(engine: Any, prompts: Sequence[str], k: int, params: SamplingParams, seed: int = 0) -> dict:
    async def independent() -> int:
        async def one(p: str, i: int) -> int:
            final = None
            async for out in engine.generate(p, replace(params, n=1, seed=derive_seed(seed, p, i)),
                                             output_kind="final"):
                final = out
            return len(final.outputs[0].token_ids)
        return sum(await asyncio.gather(*(one(p, i) for p in prompts for i in range(k))))

    async def shared() -> int:
        results = await asyncio.gather(*(SelfConsistency(n=k).solve(engine, p, params=params, seed=seed)
                                         for p in prompts))
        return sum(r.generated_tokens for r in results)

    out: dict = {"questions": len(prompts), "samples_per_question": k, "max_tokens": params.max_tokens}
    for name, run in (("independent", independent), ("self_consistency", shared)):
        started = time.perf_counter()
        tokens = await run()
        wall = time.perf_counter() - started
        out[name] = {"generated_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}
    out["speedup"] = out["self_consistency"]["tokens_per_s"] / out["independent"]["tokens_per_s"]
    return out
