"""`plait bench latency`: one request at a time, time to first token vs the decode rate after it.

Batch-1 latency is what an interactive user feels and is bound by different things than throughput (prefill is
compute-bound, decode is memory-bound), so the two phases are timed separately. plait is driven through its
engine core directly (add_request, then step() until done) so the first token's arrival is seen exactly.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from plait.bench import report
from plait.bench.offline import add_run_args, engine_dtype_name, load_baseline, reset_prefix_cache
from plait.bench.workloads import fixed_workload
from plait.params import SamplingParams


@dataclass
class LatencyRun:
    input_len: int
    output_tokens: int
    ttft_s: float  # request added -> first token out (prefill + one sample)
    total_s: float  # request added -> last token out

    @property
    def prefill_tps(self) -> float:
        return self.input_len / self.ttft_s if self.ttft_s > 0 else float("nan")

    @property
    def decode_tps(self) -> float:
        """Tokens after the first, over the time after the first."""
        rest = self.total_s - self.ttft_s
        return (self.output_tokens - 1) / rest if rest > 0 and self.output_tokens > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), prefill_tps=self.prefill_tps, decode_tps=self.decode_tps)


def add_latency_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--input-len", type=int, default=128, help="prompt tokens")
    g.add_argument("--output-len", type=int, default=128, help="tokens generated (EOS ignored)")
    g.add_argument("--seed", type=int, default=0, help="prompt seed")
    add_run_args(p)


def time_plait(llm: Any, prompt: list[int], output_len: int, request_id: str) -> LatencyRun:
    """Drive the engine core by hand so the step that emits the first token can be timestamped."""
    engine = llm.engine
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    first: float | None = None
    tokens = 0
    start = time.perf_counter()
    engine.add_request(request_id, prompt, params)
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id != request_id:
                continue
            tokens += sum(len(s.token_ids) for s in out.samples)
            if first is None and tokens:
                first = time.perf_counter()
    end = time.perf_counter()
    return LatencyRun(len(prompt), tokens, (first or end) - start, end - start)


def time_hf(model: Any, prompt: list[int], output_len: int) -> LatencyRun:
    from plait.bench.hf_baseline import hf_time_single

    ttft, total, tokens = hf_time_single(model, prompt, output_len)
    return LatencyRun(len(prompt), tokens, ttft, total)


def run_latency(args: argparse.Namespace, llm: Any = None, hf_model: Any = None) -> dict[str, Any]:
    """Alternate plait and the baseline on the same prompt each repeat; report medians and per-pair ratios."""
    from plait.engine.args import engine_kwargs

    if llm is None:
        from plait.engine.llm import LLM

        llm = LLM(**engine_kwargs(args))
    if llm.engine.has_unfinished():
        raise ValueError("the latency benchmark needs an idle engine")
    repeats = args.repeats or 3
    want_hf = args.baseline == "hf"
    if want_hf and hf_model is None:
        hf_model = load_baseline(args, llm)
    tok = llm.tokenizer
    prompts = fixed_workload(repeats, tok.vocab_size, tok.all_special_ids, args.input_len, args.output_len,
                             args.seed).prompts
    if not args.no_warmup:
        warm = fixed_workload(1, tok.vocab_size, tok.all_special_ids, 16, 4, seed=12345).prompts[0]
        time_plait(llm, warm, 4, "bench-latency-warmup")
        if want_hf:
            time_hf(hf_model, warm, 4)

    plait_runs: list[LatencyRun] = []
    hf_runs: list[LatencyRun] = []
    pairs = range(repeats)
    if not args.no_tqdm:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="latency (plait, hf)" if want_hf else "latency", unit="repeat",
                     dynamic_ncols=True)
    for i in pairs:
        reset_prefix_cache(llm)
        plait_runs.append(time_plait(llm, prompts[i], args.output_len, f"bench-latency-{i}"))
        if want_hf:
            hf_runs.append(time_hf(hf_model, prompts[i], args.output_len))

    result = summarize(args, llm, plait_runs, hf_runs)
    print(format_result(result))
    path = report.save_json(args.output or report.default_output("latency"), result)
    print(f"results saved to {path}")
    return result


_METRICS = ("ttft_s", "prefill_tps", "decode_tps", "total_s")


def _medians(runs: list[LatencyRun]) -> dict[str, float]:
    return {k: report.median([getattr(r, k) for r in runs]) for k in _METRICS}


def summarize(args: argparse.Namespace, llm: Any, plait_runs: list[LatencyRun],
              hf_runs: list[LatencyRun]) -> dict[str, Any]:
    from plait.engine.args import engine_kwargs

    dtype = engine_dtype_name(llm)
    result: dict[str, Any] = {
        "benchmark": "latency",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "config": {"batch_size": 1, "input_len": args.input_len, "output_len": args.output_len, "seed": args.seed,
                   "repeats": len(plait_runs), "warmup": not args.no_warmup,
                   "sampling": {"temperature": 0, "ignore_eos": True}, "engine": engine_kwargs(args)},
        "machine": report.machine_info(dtype),
        "plait": {"runs": [r.to_dict() for r in plait_runs], "median": _medians(plait_runs),
                  "load_seconds": llm.load_seconds},
    }
    if hf_runs:
        result["hf"] = {"runs": [r.to_dict() for r in hf_runs], "median": _medians(hf_runs), "dtype": dtype}
        # Every ratio reads "how many times better plait is": rates plait/hf, times hf/plait.
        ratio = {
            "ttft_speedup": report.ratios([r.ttft_s for r in hf_runs], [r.ttft_s for r in plait_runs]),
            "prefill_tps": report.ratios([r.prefill_tps for r in plait_runs], [r.prefill_tps for r in hf_runs]),
            "decode_tps": report.ratios([r.decode_tps for r in plait_runs], [r.decode_tps for r in hf_runs]),
            "e2e_speedup": report.ratios([r.total_s for r in hf_runs], [r.total_s for r in plait_runs]),
        }
        result["ratio"] = {"per_pair": ratio, "median": {k: report.median(v) for k, v in ratio.items()}}
    return result


def format_result(result: dict[str, Any]) -> str:
    cfg, machine = result["config"], result["machine"]
    lines = [f"\nplait bench latency: batch 1, input {cfg['input_len']} tokens, output {cfg['output_len']} tokens, "
             f"{machine['dtype']}, {machine['torch_threads']} threads, median of {cfg['repeats']}\n"]
    headers = ["engine", "TTFT ms", "prefill tok/s", "decode tok/s", "e2e s"]
    rows: list[list[Any]] = []
    for name in ("plait", "hf"):
        if name in result:
            m = result[name]["median"]
            rows.append([name, m["ttft_s"] * 1000, m["prefill_tps"], m["decode_tps"], m["total_s"]])
    if "ratio" in result:
        m = result["ratio"]["median"]
        rows.append(["plait / hf", f"{m['ttft_speedup']:.2f}x", f"{m['prefill_tps']:.2f}x",
                     f"{m['decode_tps']:.2f}x", f"{m['e2e_speedup']:.2f}x"])
    lines.append(report.table(headers, rows))
    if "ratio" in result:
        per = result["ratio"]["per_pair"]["decode_tps"]
        lines.append("\nratios are medians of per-pair ratios (plait and hf alternate on the same prompt); "
                     "decode per pair: " + ", ".join(f"{x:.2f}x" for x in per))
    return "\n".join(lines)
