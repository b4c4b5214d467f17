"""Shared-prefix attention on and off, in one run: decode-phase throughput and KV bytes read per decode step.

    plait bench shared-prefix --prefix-lens 256,1024,4096 --prompts 64 --question-len 32 --output-len 64 \
        [--baseline llama.cpp] [--plot results/shared_prefix_decode.png] [-o results/shared-prefix-attention.json]

(or `python -m plait.bench.shared_prefix_attention` with the same arguments)

One group of `--prompts` prompts behind one `--prefix-len` system prompt (bench/workloads.py's shared-prefix
workload), greedy, EOS ignored, for each prefix length with `shared_prefix_attention` on and off (same engine
settings otherwise, prefix cache on). The decode phase is every step that computes no prompt token: its output
tokens over its time is what shared-prefix attention changes; the wall time includes the prefill too. The KV bytes
attention reads per decode step are counted from the step's block tables: without sharing, every sequence reads its
whole context; with it, each group's shared blocks once plus every sequence's own suffix.

`--baseline llama.cpp` runs `llama-batched-bench` on the same GGUF with its prompt shared (`-pps -kvu`: the prompt
computed once, every sequence continuing it from one unified KV cache) for a prompt of prefix + question tokens,
`--prompts` sequences and `--output-len` tokens each, and reports its decode speed (S_TG). Its sequences share
their question too, a slight advantage to it. `--plot` draws decode tok/s against prefix length for the three.
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


def median_run(runs: list[DecodeRun]) -> DecodeRun:
    """The run with the median decode speed (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.decode_tps)[(len(runs) - 1) // 2]


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


def add_shared_prefix_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix-lens", default="256,1024,4096", help="comma-separated shared-prefix lengths")
    p.add_argument("--prompts", type=int, default=64, help="prompts behind the one shared prefix")
    p.add_argument("--question-len", type=int, default=32, help="tokens of each prompt's own after the prefix")
    p.add_argument("--output-len", type=int, default=64, help="greedy tokens per prompt (EOS ignored)")
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch / llama.cpp threads (default: torch's)")
    p.add_argument("--baseline", choices=("none", "llama.cpp"), default="none",
                   help="llama.cpp: llama-batched-bench with a shared prompt on the same GGUF, decode tok/s")
    p.add_argument("--repeats", type=int, default=2,
                   help="measured on/off pairs per prefix length, in alternating order (after one unmeasured pass); "
                        "medians are reported")
    p.add_argument("--plot", default=None, help="PNG: decode tok/s vs prefix length, on / off / baseline")
    p.add_argument("--output", "-o", default=None)
    p.add_argument("--layer-only", action="store_true",
                   help="time one attention layer of a decode step per prefix length instead of the whole engine")


def add_shared_prefix_parser(sub: Any) -> None:
    p = sub.add_parser("shared-prefix", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="shared-prefix attention on vs off: decode tok/s and KV read per step, vs llama.cpp",
                       description=__doc__.splitlines()[0])
    add_shared_prefix_args(p)
    p.set_defaults(func=run_shared_prefix_bench)


def llamacpp_decode(model: Any, prefix_lens: list[int], args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """prefix length -> llama-batched-bench's row with a shared prompt; {} (after saying why) when it cannot run."""
    import torch

    from plait.bench.llamacpp import LlamaCppUnavailable, ensure_llamacpp, run_batched_bench
    from plait.loading.sources import resolve_model

    path = resolve_model(model)
    rows: dict[int, dict[str, float]] = {}
    try:
        if path.suffix != ".gguf":
            raise LlamaCppUnavailable(f"{path} is not a GGUF file")
        paths = ensure_llamacpp()
        for prefix_len in prefix_lens:
            rows[prefix_len] = run_batched_bench(paths, path, prefix_len + args.question_len, args.output_len,
                                                 args.prompts, args.threads or torch.get_num_threads(),
                                                 shared_prompt=True)
            print(f"prefix {prefix_len:5d} llama.cpp (shared prompt) decode {rows[prefix_len]['s_tg']:7.1f} tok/s",
                  flush=True)
    except LlamaCppUnavailable as exc:
        print(f"llama.cpp baseline skipped: {exc}", file=sys.stderr)
    return rows


def plot_decode(runs: list[DecodeRun], llamacpp: dict[int, dict[str, float]], path: str, title: str) -> None:
    """Decode-phase tok/s against shared-prefix length: plait with shared-prefix attention on and off, llama.cpp."""
    from plait.bench.plots_scaling import _x_axis, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for shared, label in ((True, "plait, shared-prefix attention on"), (False, "plait, off")):
        points = sorted((r.prefix_len, r.decode_tps) for r in runs if r.shared == shared)
        ax.plot(*zip(*points), marker="o", label=label)
    if llamacpp:
        points = sorted((p, row["s_tg"]) for p, row in llamacpp.items())
        ax.plot(*zip(*points), marker="s", label="llama.cpp (batched-bench, shared prompt)")
    _x_axis(ax, [r.prefix_len for r in runs], "shared prefix length (tokens)")
    ax.set_ylabel("decode-phase output tok/s")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_shared_prefix_bench(args: argparse.Namespace) -> int:
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
    llm = LLM(args.model, dtype=args.dtype, max_num_seqs=max(args.prompts, 1), num_threads=args.threads,
              max_model_len=max(prefix_lens) + args.question_len + args.output_len + 16)
    from plait.runner.shared_prefix import MIN_SHARED_BLOCKS

    runner = llm.engine.runner
    runner.shared_prefix_min_blocks = MIN_SHARED_BLOCKS  # "on" shares every prefix length measured
    runs, medians = [], []
    for prefix_len in prefix_lens:
        prompts = shared_prefix_workload(llm.tokenizer.vocab_size, llm.tokenizer.all_special_ids, 1, args.prompts,
                                         prefix_len, args.question_len, args.output_len).prompts
        # An unmeasured pass first: the first run at a new length writes KV blocks never touched before (page
        # faults) and would charge them to whichever setting went first (measured: "on" first looked 0.8x at
        # 1,024 shared tokens, equal once warm).
        runner.shared_prefix_attention = False
        run_one(llm, prompts, args.output_len, False, prefix_len)
        these = []
        for repeat in range(args.repeats):  # the same engine, switched between runs; the order alternates
            for shared in ((True, False) if repeat % 2 == 0 else (False, True)):
                runner.shared_prefix_attention = shared
                run = run_one(llm, prompts, args.output_len, shared, prefix_len)
                these.append(run)
                print(f"prefix {prefix_len:5d} shared={'on ' if shared else 'off'} wall {run.wall_s:7.2f} s  "
                      f"decode {run.decode_tps:7.1f} tok/s  KV read/step {run.kv_mb_per_step:8.1f} MB", flush=True)
        runs += these
        on, off = (median_run([r for r in these if r.shared == shared]) for shared in (True, False))
        medians += [on, off]
        print(f"prefix {prefix_len:5d}: decode speed-up {on.decode_tps / off.decode_tps:.2f}x, wall "
              f"{off.wall_s / on.wall_s:.2f}x (medians of {args.repeats}), same tokens: "
              f"{on.outputs_digest == off.outputs_digest}", flush=True)
    dtype = str(llm._built.dtype).removeprefix("torch.")
    llamacpp = llamacpp_decode(args.model, prefix_lens, args) if args.baseline == "llama.cpp" else {}
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"command": sys.argv, "dtype": dtype, "prompts": args.prompts,
                       "question_len": args.question_len, "output_len": args.output_len,
                       "repeats": args.repeats,
                       "runs": [asdict(r) | {"decode_tps": r.decode_tps} for r in runs],
                       "medians": [asdict(r) | {"decode_tps": r.decode_tps} for r in medians],
                       "llama.cpp": {str(k): v for k, v in llamacpp.items()}}, f, indent=1)
    if args.plot:
        plot_decode(medians, llamacpp, args.plot, f"{args.prompts} sequences behind one prefix, +{args.question_len} "
                                                f"own tokens, {args.output_len} generated; plait {dtype}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shared_prefix_args(p)
    return run_shared_prefix_bench(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
