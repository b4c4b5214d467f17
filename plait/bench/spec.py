"""`plait bench spec`: speculative decoding on and off in one run, on one engine.

One engine is built with the speculative config; the "off" passes set `SamplingParams(speculative=False)`, so both
modes share the weights, the KV pool and the process, and alternate (off, on, off, on ...) to spread noise. Each
workload runs at every concurrency: 1 (prompts one at a time), and N prompts in one `generate` call. Greedy, up to
--output-len tokens, stopping at EOS (a copy task ends when the copy does). `--samples N --temperature T` draws N
seeded samples of each prompt instead (the suffix drafter's ground: siblings draft for each other); sampled outputs
then agree on and off in distribution, not token for token (the rejection rule consumes the random stream
differently), so the identical column means little there.

Reported per (workload, concurrency): output tok/s off and on and their ratio, the acceptance rate (accepted /
drafted), tokens per target forward of a drafting request (1 + accepted / verifications), a prompt-lookup replay
of the plain greedy outputs (tokens per step a k = 4 n-gram drafter would get with no cost control: how much the
workload repeats its context), and how many outputs are token-identical on and off.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from plait.bench import report
from plait.params import SamplingParams

DEFAULT_SPEC = {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


def add_spec_bench_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--workloads", default="copy,chat", help="comma-separated: copy (editing, extraction, "
                   "repetition of given text), chat (plain questions)")
    g.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrency levels")
    g.add_argument("--batch1-prompts", type=int, default=4, help="prompts run one at a time at concurrency 1")
    g.add_argument("--output-len", type=int, default=128, help="max tokens per request (greedy, stops at EOS)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--repeats", type=int, default=1, help="alternating off/on passes per case")
    g.add_argument("--samples", type=int, default=1,
                   help="samples per prompt (SamplingParams.n); above 1 they are drawn at --temperature with a seed, "
                        "and a sibling's text can draft for the others (the suffix drafter's ground)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; needed above 0 when --samples > 1")
    g.add_argument("--output", "-o", default=None, help="JSON results path")


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--{name} must list integers >= 1, got {text!r}")
    return values


def _timed(llm: Any, prompts: list[list[int]], params: SamplingParams, one_at_a_time: bool) -> dict[str, Any]:
    llm.reset_prefix_cache()  # both modes compute every prompt
    before = llm.stats().spec
    drafts, drafted, accepted = before.num_drafts, before.num_draft_tokens, before.num_accepted_tokens
    start = time.perf_counter()
    if one_at_a_time:
        outs = [llm.generate([p], params, use_tqdm=False)[0] for p in prompts]
    else:
        outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    after = llm.stats().spec
    tokens = [list(c.token_ids) for o in outs for c in o.outputs]  # every sample of every prompt
    return {"wall_s": wall, "output_tokens": sum(map(len, tokens)), "tokens": tokens,
            "verifications": after.num_drafts - drafts, "drafted": after.num_draft_tokens - drafted,
            "accepted": after.num_accepted_tokens - accepted}


def run_spec_bench(args: argparse.Namespace) -> dict[str, Any]:
    from plait.bench.spec_workloads import ngram_replay, spec_workload
    from plait.engine.args import engine_kwargs
    from plait.engine.llm import LLM

    kwargs = engine_kwargs(args)
    kwargs["speculative_config"] = kwargs.get("speculative_config") or DEFAULT_SPEC
    levels = _int_list(args.concurrency, "concurrency")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.samples > 1 and args.temperature <= 0:
        raise ValueError("--samples > 1 needs --temperature > 0 (greedy samples of one prompt are all the same)")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    llm = LLM(**kwargs)
    print(f"speculative config: {llm.config.speculative_config}")
    warm = spec_workload("copy", 2, llm.tokenizer, seed=12345)
    _timed(llm, warm, SamplingParams(max_tokens=8, temperature=0), False)
    rows, cases = [], []
    for name in workloads:
        prompts = spec_workload(name, max(max(levels), args.batch1_prompts), llm.tokenizer, args.seed)
        for level in levels:
            batch = prompts[: args.batch1_prompts] if level == 1 else prompts[:level]
            runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for on in (False, True):
                    params = SamplingParams(max_tokens=args.output_len, temperature=args.temperature,
                                            n=args.samples, seed=args.seed if args.temperature > 0 else None,
                                            speculative=on)
                    runs[on].append(_timed(llm, batch, params, one_at_a_time=level == 1))
            off_tps = report.median([r["output_tokens"] / r["wall_s"] for r in runs[False]])
            on_tps = report.median([r["output_tokens"] / r["wall_s"] for r in runs[True]])
            on = runs[True][-1]
            off_tokens = runs[False][-1]["tokens"]
            sample_prompts = [p for p in batch for _ in range(args.samples)]
            replay = sum(ngram_replay(p, t) * len(t) for p, t in zip(sample_prompts, off_tokens)) / max(
                1, sum(len(t) for t in off_tokens))
            identical = sum(a == b for a, b in zip(off_tokens, on["tokens"]))
            case = {"workload": name, "concurrency": level, "num_prompts": len(batch), "samples": args.samples,
                    "temperature": args.temperature,
                    "off_tps": off_tps, "on_tps": on_tps, "ratio": on_tps / off_tps,
                    "acceptance_rate": on["accepted"] / on["drafted"] if on["drafted"] else 0.0,
                    "tokens_per_forward": 1 + on["accepted"] / on["verifications"] if on["verifications"] else 1.0,
                    "drafted": on["drafted"], "accepted": on["accepted"], "verifications": on["verifications"],
                    "replay_tokens_per_step": replay, "identical_outputs": identical,
                    "runs": {str(k): [{x: y for x, y in r.items() if x != "tokens"} for r in v]
                             for k, v in runs.items()}}
            cases.append(case)
            rows.append([name, level, report.fmt(off_tps), report.fmt(on_tps), report.fmt(case["ratio"], 2) + "x",
                         report.fmt(case["acceptance_rate"], 2), report.fmt(case["tokens_per_forward"], 2),
                         report.fmt(replay, 2), f"{identical}/{len(off_tokens)}"])
            print(f"  {name} @ {level}: off {off_tps:.1f} tok/s, on {on_tps:.1f} tok/s", flush=True)
    print(report.table(["workload", "concurrency", "off tok/s", "on tok/s", "on/off", "accept rate",
                        "tok/forward", "replay tok/step", "identical"], rows))
    result = {"kind": "spec", "machine": report.machine_info(str(llm._built.dtype).removeprefix("torch.")),
              "speculative_config": str(llm.config.speculative_config), "output_len": args.output_len,
              "repeats": args.repeats, "cases": cases}
    path = report.save_json(args.output or report.default_output("spec"), result)
    print(f"results saved to {path}")
    return result
