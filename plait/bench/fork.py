"""`plait bench offline --workload fork`: n samples of each of N long prompts against N x n independent prompts.

    plait bench offline --workload fork --num-questions 4 --samples 1,4,16,64 --input-len 1024 --output-len 64

For each n, in one run: N questions sampled n times each (`SamplingParams(n=n)`), then N x n distinct prompts of
the same length sampled once each, with the same sampling (temperature 1, seeded, EOS ignored, so every sample
has exactly --output-len tokens) and the prefix cache reset before each pass. The fork pass computes each
question's prompt once and its samples share those KV blocks (and attend to them together, shared-prefix
attention; the other samples fork from the first after its prompt, copy-on-write, unless --no-fork-samples); the
independent pass computes and holds every prompt. Reported per pass: wall time, generated tok/s
(all samples), tok/s per sample (how fast each sequence grew), prompt tokens computed, preemptions, and the
fork / independent ratio of generated tok/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from plait.bench import report
from plait.bench.workloads import Workload, fork_workloads
from plait.params import SamplingParams


@dataclass
class ForkPass:
    kind: str  # "fork" or "independent"
    n: int  # samples per question
    num_prompts: int
    num_samples: int
    prompt_len: int
    wall_s: float
    output_tokens: int
    prefill_tokens: int  # prompt tokens the engine computed (prefix-cache hits and shared prompts excluded)
    preemptions: int
    forks: int = 0  # samples that forked from their first sibling after its prompt (copy-on-write)

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def per_sample_tps(self) -> float:
        return self.output_tps / self.num_samples

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), output_tps=self.output_tps, per_sample_tps=self.per_sample_tps)


def add_fork_args(group: Any) -> None:
    group.add_argument("--num-questions", type=int, default=4, help="fork: questions (N), each sampled n times")
    group.add_argument("--samples", default="1,4,16,64",
                       help="fork: comma-separated samples per question (n); the prompt length is --input-len")


def parse_samples(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--samples must be comma-separated integers >= 1, got {text!r}")
    return values


def run_pass(llm: Any, workload: Workload, kind: str, n: int, seed: int) -> ForkPass:
    """One timed generate call: `workload`'s prompts sampled n times each, from a cold prefix cache."""
    llm.reset_prefix_cache()
    params = SamplingParams(n=n, max_tokens=workload.output_lens[0], temperature=1.0, seed=seed, ignore_eos=True)
    before = llm.stats()
    start = time.perf_counter()
    outs = llm.generate(workload.prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    after = llm.stats()
    output_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return ForkPass(kind, n, len(workload), len(workload) * n, len(workload.prompts[0]), wall, output_tokens,
                    after.prompt_tokens - before.prompt_tokens, after.preemptions - before.preemptions,
                    after.forks - before.forks)


def run_fork(args: argparse.Namespace, llm: Any) -> dict[str, Any]:
    """Every n of --samples: the fork pass, then the independent pass; prints the table and writes the JSON."""
    from plait.bench.offline import engine_dtype_name, warm_up

    samples = parse_samples(args.samples)
    tokenizer = llm.tokenizer
    if not args.no_warmup:
        warm_up(llm, None, tokenizer)
    passes: list[ForkPass] = []
    for n in samples:
        forked, independent = fork_workloads(tokenizer.vocab_size, tokenizer.all_special_ids, args.num_questions,
                                             n, args.input_len, args.output_len, args.seed)
        passes.append(run_pass(llm, forked, "fork", n, args.seed))
        passes.append(run_pass(llm, independent, "independent", 1, args.seed))
        print(f"n={n}: fork {passes[-2].output_tps:.1f} tok/s, independent {passes[-1].output_tps:.1f} tok/s",
              file=sys.stderr)
    result = {
        "benchmark": "offline-fork",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "config": {"workload": "fork", "num_questions": args.num_questions, "samples": samples,
                   "input_len": args.input_len, "output_len": args.output_len, "seed": args.seed,
                   "sampling": {"temperature": 1.0, "seed": args.seed, "ignore_eos": True},
                   "max_num_seqs": llm.config.max_num_seqs, "fork_samples": llm.config.fork_samples,
                   "max_num_batched_tokens": llm.config.token_budget(offline=True),
                   "kv_blocks": llm.engine.scheduler.kv.num_blocks, "block_size": llm.engine.scheduler.kv.block_size},
        "machine": report.machine_info(engine_dtype_name(llm)),
        "passes": [p.to_dict() for p in passes],
        "ratio_output_tps": {str(f.n): f.output_tps / i.output_tps for f, i in zip(passes[::2], passes[1::2])},
    }
    print(format_fork(result))
    path = report.save_json(args.output or report.default_output("offline-fork"), result)
    print(f"results saved to {path}")
    return result


def format_fork(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"\nplait bench offline --workload fork: {cfg['num_questions']} questions x n samples vs as many "
             f"independent prompts; prompts {cfg['input_len']} tokens, {cfg['output_len']} tokens per sample, "
             f"{result['machine']['dtype']}, KV pool {cfg['kv_blocks']} blocks of {cfg['block_size']}\n"]
    headers = ["n", "pass", "prompts", "samples", "wall s", "gen tok/s", "tok/s per sample", "prefill tok",
               "preempted", "fork / indep"]
    rows = []
    for p in result["passes"]:
        n = p["n"] if p["kind"] == "fork" else p["num_samples"] // cfg["num_questions"]
        ratio = result["ratio_output_tps"][str(n)] if p["kind"] == "fork" else ""
        rows.append([n, p["kind"], p["num_prompts"], p["num_samples"], p["wall_s"], p["output_tps"],
                     p["per_sample_tps"], p["prefill_tokens"], p["preemptions"],
                     f"{ratio:.2f}x" if ratio != "" else ""])
    lines.append(report.table(headers, rows))
    return "\n".join(lines)
