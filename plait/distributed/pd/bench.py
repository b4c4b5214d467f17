"""Colocated vs split on a mixed workload: `plait bench pd` (or `python -m plait.distributed.pd.bench`).

Short chats stream (short prompt, many output tokens) while long prompts arrive at intervals (long prompt, few
output tokens). Colocated, every long prompt's prefill chunks share steps with the chats' decodes, so the chats'
time per output token (TPOT) jumps while one runs; split, the decode worker only ever computes the last block
of a prompt, and the prefill worker the prompts. Modes:

- `colocated`: one AsyncLLM in this process with --threads threads (default 2: the whole machine);
- `dp`: `RayRouter`, 2 replicas of 1 thread (each runs both phases);
- `split`: `PDRouter`, 1 prefill + 1 decode worker of 1 thread, KV through --kv-connector.

Per request class: TTFT and TPOT p50 / p99 (ms), and output tokens/s over the whole run. Every request is
greedy with ignore_eos, so each mode does the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from plait.params import SamplingParams


@dataclass
class Workload:
    num_short: int = 8
    short_prompt: int = 32
    short_output: int = 64
    short_interval: float = 0.25  # seconds between chat arrivals
    num_long: int = 4
    long_prompt: int = 1024
    long_output: int = 8
    long_interval: float = 2.0  # seconds between long prompts, the first one after `long_delay`
    long_delay: float = 1.0
    seed: int = 0

    def requests(self, vocab: int = 49152) -> list[tuple[float, str, list[int], SamplingParams]]:
        """(arrival offset s, class, prompt token ids, params), sorted by arrival."""
        rng = random.Random(self.seed)
        out = []
        for i in range(self.num_short):
            out.append((i * self.short_interval, "short", [rng.randrange(100, vocab) for _ in range(self.short_prompt)],
                        SamplingParams(max_tokens=self.short_output, temperature=0, ignore_eos=True)))
        for i in range(self.num_long):
            out.append((self.long_delay + i * self.long_interval, "long",
                        [rng.randrange(100, vocab) for _ in range(self.long_prompt)],
                        SamplingParams(max_tokens=self.long_output, temperature=0, ignore_eos=True)))
        return sorted(out, key=lambda r: r[0])


@dataclass
class Timing:
    kind: str
    submitted: float
    token_times: list[float]

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.submitted

    @property
    def tpot(self) -> float | None:
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)


async def run_workload(client: Any, workload: Workload) -> tuple[list[Timing], float]:
    """Drive an engine client (plait/engine/protocol.py) through the workload; (timings, wall seconds)."""
    start = time.perf_counter()

    async def one(offset: float, kind: str, ids: list[int], params: SamplingParams) -> Timing:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        timing = Timing(kind, time.perf_counter(), [])
        async for out in client.generate(ids, params):
            now = time.perf_counter()
            timing.token_times.extend([now] * len(out.outputs[0].token_ids))
        return timing

    timings = await asyncio.gather(*(one(*r) for r in workload.requests()))
    return list(timings), time.perf_counter() - start


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def summarize(mode: str, timings: list[Timing], wall: float) -> dict:
    row: dict[str, Any] = {"mode": mode, "wall_s": round(wall, 2),
                           "output_tok_s": round(sum(len(t.token_times) for t in timings) / wall, 1)}
    for kind in ("short", "long"):
        mine = [t for t in timings if t.kind == kind]
        ttft = [t.ttft * 1e3 for t in mine]
        tpot = [t.tpot * 1e3 for t in mine if t.tpot is not None]
        row[kind] = {"n": len(mine), "ttft_p50_ms": round(_pct(ttft, 0.5), 1), "ttft_p99_ms": round(_pct(ttft, 0.99), 1),
                     "tpot_p50_ms": round(_pct(tpot, 0.5), 1), "tpot_p99_ms": round(_pct(tpot, 0.99), 1),
                     "tpot_mean_ms": round(statistics.fmean(tpot), 1) if tpot else float("nan")}
    return row


def start(mode: str, args: argparse.Namespace, config: dict) -> Any:
    if mode == "colocated":
        from plait.engine.async_llm import AsyncLLM

        return AsyncLLM(**config, num_threads=args.threads)
    if mode == "dp":
        from plait.distributed.router import RayRouter

        return RayRouter(**config, data_parallel_size=2, num_cpus_per_replica=1)
    if mode == "split":
        from plait.distributed.pd.router import PDRouter

        return PDRouter(**config, connector=args.kv_connector, num_cpus_per_worker=1)
    raise ValueError(f"mode must be colocated, dp or split; got {mode!r}")


def add_pd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kv-cache-memory", default="1GiB")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--modes", default="colocated,split", help="comma-separated: colocated, dp, split")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the colocated engine")
    p.add_argument("--kv-connector", choices=("ray", "tcp"), default="ray")
    for field, value in asdict(Workload()).items():
        p.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--json", default=None, help="write the rows to this file")


def add_pd_parser(subparsers: Any) -> None:
    """Register `plait bench pd` (needs the ray extra for the dp and split modes)."""
    p = subparsers.add_parser("pd", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="prefill/decode split vs colocated (and data-parallel) on a mixed workload",
                              description=__doc__.split("\n")[0])
    add_pd_args(p)
    p.set_defaults(func=run_pd_bench)


def run_pd_bench(args: argparse.Namespace) -> int:
    workload = Workload(**{f: getattr(args, f) for f in asdict(Workload())})
    config = dict(model=args.model, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory,
                  max_model_len=args.max_model_len)
    rows = []
    for mode in args.modes.split(","):
        client = start(mode, args, config)
        try:
            asyncio.run(run_workload(client, Workload(num_short=2, num_long=1, long_delay=0.0,
                                                      long_prompt=min(64, workload.long_prompt))))  # warm-up
            timings, wall = asyncio.run(run_workload(client, workload))
        finally:
            client.shutdown()
        rows.append(summarize(mode, timings, wall))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print("| mode | chats TTFT p50 / p99 ms | chats TPOT p50 / p99 ms | long TTFT p50 / p99 ms | output tok/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        s, lg = r["short"], r["long"]
        print(f"| {r['mode']} | {s['ttft_p50_ms']} / {s['ttft_p99_ms']} | {s['tpot_p50_ms']} / {s['tpot_p99_ms']} "
              f"| {lg['ttft_p50_ms']} / {lg['ttft_p99_ms']} | {r['output_tok_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": asdict(workload), "rows": rows}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m plait.distributed.pd.bench", description=__doc__.split("\n")[0])
    add_pd_args(p)
    run_pd_bench(p.parse_args(argv))


if __name__ == "__main__":
    main()
