"""`plait bench offline | latency | serve`: argument parsing and dispatch (heavy imports wait until a run)."""

from __future__ import annotations

import argparse
from typing import Any


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench` and its sub-commands on plait's top-level sub-parsers."""
    from plait.bench.latency import add_latency_args
    from plait.bench.offline import add_offline_args
    from plait.engine.args import add_engine_args

    bench = subparsers.add_parser("bench", help="benchmarks: offline throughput, batch-1 latency, serving load")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("offline", formatter_class=fmt,
                       help="throughput of one LLM.generate call over a seeded workload",
                       description="Throughput of one LLM.generate call over a seeded workload "
                                   "(greedy, EOS ignored), optionally against HF transformers.")
    add_offline_args(p)
    add_engine_args(p)
    p = sub.add_parser("latency", formatter_class=fmt, help="batch-1 time to first token and decode tok/s",
                       description="Batch-1 time to first token and decode tok/s, median of --repeats.")
    add_latency_args(p)
    add_engine_args(p)
    p = sub.add_parser("overhead", formatter_class=fmt,
                       help="the engine's own time per step (outside the model) early vs late in a long generation")
    from plait.bench.overhead import add_overhead_args

    add_overhead_args(p)
    add_engine_args(p)
    p = sub.add_parser("spec", formatter_class=fmt,
                       help="speculative decoding on vs off in one run: copy-heavy and chat workloads, 1..64 streams")
    from plait.bench.spec import add_spec_bench_args

    add_spec_bench_args(p)
    add_engine_args(p)
    p = sub.add_parser("weight-update", formatter_class=fmt,
                       help="update_weights time by kind: from the file, state dict, buckets, partial")
    from plait.bench.weight_update import add_weight_update_args

    add_weight_update_args(p)
    add_engine_args(p)
    from plait.bench.serve import add_serve_parser

    add_serve_parser(sub)
    from plait.bench.lm_head import add_lm_head_parser
    from plait.bench.plots import add_report_parser
    from plait.bench.roofline import add_roofline_parser
    from plait.bench.sweep import add_sweep_parser

    add_sweep_parser(sub)
    add_roofline_parser(sub)
    add_lm_head_parser(sub)
    from plait.bench.shared_prefix_attention import add_shared_prefix_parser

    add_shared_prefix_parser(sub)
    from plait.distributed.pd.bench import add_pd_parser

    add_pd_parser(sub)
    add_report_parser(sub)
    bench.set_defaults(func=run_bench)
    return bench


def run_bench(args: argparse.Namespace) -> int:
    """Run the chosen benchmark; it prints its table and writes its JSON."""
    if args.bench_command == "offline":
        from plait.bench.offline import run_offline

        run_offline(args)
    elif args.bench_command == "latency":
        from plait.bench.latency import run_latency

        run_latency(args)
    elif args.bench_command == "overhead":
        from plait.bench.overhead import run_overhead

        run_overhead(args)
    elif args.bench_command == "spec":
        from plait.bench.spec import run_spec_bench

        run_spec_bench(args)
    elif args.bench_command == "weight-update":
        from plait.bench.weight_update import run_weight_update

        run_weight_update(args)
    elif args.bench_command in ("sweep", "roofline", "report", "lm-head", "pd", "shared-prefix"):
        return args.func(args)
    elif args.bench_command == "serve":
        from plait.bench.serve import run_serve_bench

        return run_serve_bench(args)
    else:
        raise ValueError(f"unknown benchmark {args.bench_command!r}")
    return 0
