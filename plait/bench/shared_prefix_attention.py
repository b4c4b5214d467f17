"""Shared-prefix attention on and off, in one run: decode-phase throughput and KV bytes read per decode step.

    python -m plait.bench.shared_prefix_attention --prefix-lens 256,1024,4096 --prompts 64 --question-len 32 \
        --output-len 64 [-o results/shared-prefix-attention.json]

One group of `--prompts` prompts behind one `--prefix-len` system prompt (bench/workloads.py's shared-prefix
workload), greedy, EOS ignored, for each prefix length with `shared_prefix_attention` on and off (same engine
settings otherwise, prefix cache on). The decode phase is every step that computes no prompt token: its output
tokens over its time is what shared-prefix attention changes; the wall time includes the prefill too. The KV bytes
attention reads per decode step are counted from the step's block tables: without sharing, every sequence reads its
whole context; with it, each group's shared blocks once plus every sequence's own suffix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from plait.bench.workloads import shared_prefix_workload
from plait.params import SamplingParams


@dataclass
class DecodeRun:
    prefix_len: int
    shared: bool
    wall_s: float
    decode_s: float
    decode_tokens: int
    kv_mb_per_step: float  # KV read by attention per decode step, all layers, MB (mean over decode steps)
    outputs_digest: int

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


def kv_tokens_read(scheduler: Any, block_size: int, shared: bool) -> int:
    """Context tokens attention reads in a decode step of the running sequences (their block tables now)."""
    from plait.runner.shared_prefix import find_groups

    running = [r for r in scheduler.running if r.prefill_done]
    contexts = [r.num_computed + 1 for r in running]
    total = sum(contexts)
    if not shared:
        return total
    tables = [scheduler.kv.block_table(r.request_id) for r in running]
    for members, blocks in find_groups(tables, [(c - 1) // block_size for c in contexts]):
        total -= (len(members) - 1) * blocks * block_size  # the shared run is read once, not once per member
    return total


def run_one(llm: Any, prompts: list[list[int]], output_len: int, shared: bool, prefix_len: int) -> DecodeRun:
    core = llm.engine
    sched = core.scheduler
    block_size = sched.kv.block_size
    cfg = llm._built.model_config
    bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * llm._built.dtype.itemsize
    sched.kv.reset_prefix_cache()
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    ids = [f"spa-{prefix_len}-{int(shared)}-{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        core.add_request(rid, p, params)
    outputs: dict[str, list[int]] = {rid: [] for rid in ids}
    decode_s, decode_tokens, kv_bytes, decode_steps = 0.0, 0, 0, 0
    start = time.perf_counter()
    while core.has_unfinished():
        prompt_before, gen_before = sched.num_prompt_tokens_computed, sched.num_generated_tokens
        read = kv_tokens_read(sched, block_size, shared)
        t = time.perf_counter()
        for out in core.step():  # the core hands out new tokens only
            outputs[out.request_id] += out.samples[0].token_ids if out.samples else []
        if sched.num_prompt_tokens_computed == prompt_before:
            decode_s += time.perf_counter() - t
            decode_tokens += sched.num_generated_tokens - gen_before
            kv_bytes += read * bytes_per_token
            decode_steps += 1
    wall = time.perf_counter() - start
    digest = hash(tuple(tuple(outputs[r]) for r in ids))
    return DecodeRun(prefix_len, shared, wall, decode_s, decode_tokens,
                     kv_bytes / max(decode_steps, 1) / 1e6, digest)


def layer_times(prefix_len: int, num_seqs: int, repeats: int = 20, heads: int = 9, kv_heads: int = 3,
                dim: int = 64, block_size: int = 16) -> dict[bool, float]:
    """One attention layer of a decode step (bf16, the C kernels), `num_seqs` sequences behind one shared
    `prefix_len`-token prefix plus 40-46 tokens of their own: best-of-two ms per call, off (False) and on (True)."""
    import torch

    from plait.core.sched_output import ScheduledChunk
    from plait.runner import native
    from plait.runner.attention import KVCache, PagedAttention
    from plait.runner.input_batch import build_input_batch

    kernels = native.load_kernels()
    dtype = torch.bfloat16
    prefix = list(range(prefix_len // block_size))
    cache = KVCache(1, len(prefix) + 4 * num_seqs, block_size, kv_heads, dim, dtype)
    cache.tensor.normal_()
    chunks = [ScheduledChunk(f"r{i}", [1], len(prefix) * block_size + 40 + i % 7,
                             prefix + list(range(len(prefix) + 4 * i, len(prefix) + 4 * i + 4)), sample=True)
              for i in range(num_seqs)]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(num_seqs, n, dim, generator=g).to(dtype) for n in (heads, kv_heads, kv_heads))
    best: dict[bool, float] = {}
    for shared in (False, True, False, True):
        batch = build_input_batch(chunks, block_size, torch.device("cpu"), dtype, attention_kernel=kernels is not None,
                                  shared_prefix=shared)
        attn = PagedAttention(cache, batch.attention, heads, kv_heads, dim, kernels=kernels)
        attn(0, q, k, v)
        start = time.perf_counter()
        for _ in range(repeats):
            attn(0, q, k, v)
        ms = (time.perf_counter() - start) / repeats * 1e3
        best[shared] = min(best.get(shared, ms), ms)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix-lens", default="256,1024,4096")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--question-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--output", "-o", default=None)
    p.add_argument("--layer-only", action="store_true",
                   help="time one attention layer of a decode step per prefix length instead of the whole engine")
    args = p.parse_args(argv)
    if args.layer_only:
        for prefix_len in (int(x) for x in args.prefix_lens.split(",")):
            best = layer_times(prefix_len, args.prompts)
            flop = 4 * args.prompts * 9 * prefix_len * 64  # q.k and p.v over the shared prefix, 9 heads of 64
            print(f"prefix {prefix_len:5d}, {args.prompts} seqs, one layer: off {best[False]:.2f} ms, on "
                  f"{best[True]:.2f} ms ({best[False] / best[True]:.2f}x); prefix attention "
                  f"{flop / best[True] / 1e6:.1f} GFLOP/s with it on", flush=True)
        return 0
    from plait.engine.llm import LLM

    prefix_lens = [int(x) for x in args.prefix_lens.split(",")]
    llm = LLM(args.model, dtype=args.dtype, max_num_seqs=max(args.prompts, 1),
              max_model_len=max(prefix_lens) + args.question_len + args.output_len + 16)
    runner = llm.engine.runner
    runs = []
    for prefix_len in prefix_lens:
        prompts = shared_prefix_workload(llm.tokenizer.vocab_size, llm.tokenizer.all_special_ids, 1, args.prompts,
                                         prefix_len, args.question_len, args.output_len).prompts
        for shared in (True, False):  # the same engine, switched between runs
            runner.shared_prefix_attention = shared
            run = run_one(llm, prompts, args.output_len, shared, prefix_len)
            runs.append(run)
            print(f"prefix {prefix_len:5d} shared={'on ' if shared else 'off'} wall {run.wall_s:7.2f} s  decode "
                  f"{run.decode_tps:7.1f} tok/s  KV read/step {run.kv_mb_per_step:8.1f} MB", flush=True)
        on, off = runs[-2], runs[-1]
        print(f"prefix {prefix_len:5d}: decode speed-up {on.decode_tps / off.decode_tps:.2f}x, wall "
              f"{off.wall_s / on.wall_s:.2f}x, same tokens: {on.outputs_digest == off.outputs_digest}", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"command": sys.argv, "runs": [asdict(r) | {"decode_tps": r.decode_tps} for r in runs]}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
