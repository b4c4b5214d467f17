"""The split benchmark's workload, driver and summary, on tiny engines (no Ray)."""

from __future__ import annotations

import asyncio

from plait.distributed.pd.bench import Workload, run_workload, summarize
from plait.distributed.pd.client import PDClient
from plait.engine.async_llm import AsyncLLM


def test_workload_runs_colocated_and_split(make_engine):
    work = Workload(num_short=2, short_prompt=8, short_output=5, short_interval=0.01, num_long=1, long_prompt=40,
                    long_output=3, long_delay=0.02, long_interval=0.1)
    reqs = work.requests(vocab=500)
    assert [r[1] for r in reqs].count("long") == 1 and len(reqs[-1][2]) in (8, 40)
    assert [r[0] for r in reqs] == sorted(r[0] for r in reqs)

    colocated = make_engine(AsyncLLM, num_threads=1)
    split = PDClient(make_engine(AsyncLLM, num_threads=1), make_engine(AsyncLLM, num_threads=1))
    for client in (colocated, split):
        work.seed = 0
        timings, wall = asyncio.run(run_workload(client, Workload(**{**work.__dict__})))
        row = summarize("x", timings, wall)
        assert (row["short"]["n"], row["long"]["n"]) == (2, 1)
        assert sorted(len(t.token_times) for t in timings) == [3, 5, 5]
        assert row["output_tok_s"] > 0 and row["short"]["ttft_p50_ms"] > 0
    split.shutdown()


def test_plait_bench_pd_parses_its_workload():
    from plait.cli import build_parser

    args = build_parser().parse_args(["bench", "pd", "--modes", "colocated,split", "--num-long", "2",
                                      "--kv-connector", "tcp"])
    assert (args.bench_command, args.modes, args.num_long, args.kv_connector) == ("pd", "colocated,split", 2, "tcp")
    assert args.func.__name__ == "run_pd_bench"
