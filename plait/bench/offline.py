"""`plait bench offline`: a whole workload through one `LLM.generate` call, optionally against HF transformers.

One call with every request is how offline batch jobs use plait, so that is what is timed: scheduling,
continuous batching, prefill and decode together. Outputs are forced to their full length (ignore_eos, greedy)
so every engine produces the same number of tokens and tok/s compare like with like.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from plait.bench import report
from plait.bench.fork import add_fork_args, run_fork
from plait.bench.report import Throughput
from plait.bench.workloads import WORKLOADS, Workload, add_extra_workload_args, make_workload, workload_from_args
from plait.params import SamplingParams


def add_offline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--workload", choices=WORKLOADS + ("fork",), default="random",
                   help="random: input lengths uniform in [--min-input-len, --max-input-len]; "
                        "fixed: every input --input-len; sharegpt-like: log-normal ShareGPT-shaped input/output "
                        "lengths (synthetic, seeded); shared-prefix: --num-groups x --prompts-per-group prompts "
                        "sharing a --prefix-len system prompt, then a --question-len question; chat: real "
                        "questions through the model's chat template; fork: --num-questions prompts of --input-len "
                        "tokens sampled n times each for n in --samples, against as many independent prompts "
                        "(plait/bench/fork.py)")
    g.add_argument("--num-prompts", type=int, default=256, help="requests in the workload")
    g.add_argument("--input-len", type=int, default=128, help="prompt tokens (fixed workload)")
    g.add_argument("--min-input-len", type=int, default=64, help="shortest prompt (random workload)")
    g.add_argument("--max-input-len", type=int, default=512, help="longest prompt (random workload)")
    g.add_argument("--output-len", type=int, default=128, help="tokens generated per request (EOS ignored)")
    g.add_argument("--seed", type=int, default=0, help="workload seed; the same seed gives the same prompts")
    add_extra_workload_args(g)
    add_fork_args(g)
    add_run_args(p, baselines=("hf", "llama.cpp"))
    b = p.add_argument_group("baseline")
    b.add_argument("--hf-batch-size", type=int, default=None,
                   help="static batch size for HF generate (default: --max-num-seqs, at most 64)")
    b.add_argument("--hf-num-prompts", type=int, default=None,
                   help="HF runs the first this-many prompts only, to stay affordable (default: min(N, 64))")
    b.add_argument("--llamacpp-formats", default="file,bf16,q8_0",
                   help="llama.cpp formats to try, comma-separated from file (the GGUF as given), bf16, q8_0 (the "
                        "same weights converted once with llama-quantize); one pass of each picks the fastest, "
                        "which is the baseline")


def add_run_args(p: argparse.ArgumentParser, baselines: tuple[str, ...] = ("hf",)) -> None:
    """Flags shared by the offline and latency benchmarks."""

    def baseline_list(text: str) -> str:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in ("none", *baselines)]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown baseline {', '.join(unknown)}; choose from "
                                             f"none, {', '.join(baselines)} (comma-separated)")
        return ",".join(names) or "none"

    g = p.add_argument_group("run")
    g.add_argument("--baseline", type=baseline_list, default="none",
                   help="comma-separated, from: none, " + ", ".join(baselines) + ". hf: HuggingFace "
                        "transformers on the same model file and prompts"
                        + ("; llama.cpp: llama-batched-bench on the same GGUF at the same parallelism and lengths "
                           "(built once, see plait/bench/llamacpp.py)" if "llama.cpp" in baselines else ""))
    g.add_argument("--repeats", type=int, default=None,
                   help="timed passes (default: 1 offline, 3 latency); with a baseline they alternate A B A B")
    g.add_argument("--no-warmup", action="store_true", help="skip the short untimed warm-up pass")
    g.add_argument("--no-tqdm", action="store_true", help="no progress bars")
    g.add_argument("--output", "-o", default=None, help="JSON results path (default results/bench-<kind>-<time>.json)")


def engine_dtype_name(llm: Any) -> str:
    """The dtype plait actually resolved ('auto' becomes bf16 or fp32 depending on the CPU)."""
    built = getattr(llm, "_built", None)
    dtype = getattr(built, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else str(llm.config.dtype)


def reset_prefix_cache(llm: Any) -> None:
    """Repeats reuse the same prompts; without this the second pass would be served from the prefix cache."""
    llm.reset_prefix_cache()


def build_workload(args: argparse.Namespace, tokenizer: Any) -> Workload:
    return workload_from_args(args, tokenizer.vocab_size, tokenizer.all_special_ids, tokenizer)


def peak_rss_kib() -> int:
    """This process's peak resident set size (getrusage's ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def run_plait(llm: Any, workload: Workload, progress: bool = True) -> Throughput:
    """One timed `generate` call over the whole workload."""
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in workload.output_lens]
    before = llm.stats().prompt_tokens
    start = time.perf_counter()
    outs = llm.generate(workload.prompts, params, use_tqdm=progress)
    wall = time.perf_counter() - start
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return Throughput(wall, workload.prompt_tokens, output_tokens, len(workload),
                      prefill_tokens=llm.stats().prompt_tokens - before)


def warm_up(llm: Any, hf_model: Any | None, tokenizer: Any) -> None:
    """A few short requests through each engine so one-time costs (allocations, kernel choice) are not timed."""
    tiny = make_workload("fixed", 2, tokenizer.vocab_size, tokenizer.all_special_ids, input_len=16,
                         output_len=4, seed=12345)
    run_plait(llm, tiny, progress=False)
    reset_prefix_cache(llm)
    if hf_model is not None:
        from plait.bench.hf_baseline import run_hf_batches

        run_hf_batches(hf_model, tiny, batch_size=2, progress=False)


def load_baseline(args: argparse.Namespace, llm: Any) -> Any:
    """HF on the same model file, in the dtype plait resolved to."""
    import torch

    from plait.bench.hf_baseline import load_hf_model
    from plait.loading.sources import resolve_model

    dtype = getattr(torch, engine_dtype_name(llm))
    print(f"loading HF baseline ({dtype}) from {resolve_model(args.model)} ...", file=sys.stderr)
    return load_hf_model(resolve_model(args.model), dtype)


def prepare_llamacpp(args: argparse.Namespace, llm: Any, workload: Workload) -> dict[str, Any] | None:
    """The llama-batched-bench case matching this plait run (building llama.cpp if needed), or None after
    printing why it cannot run. A random workload's lengths are replaced by their means."""
    import torch

    from plait.bench.llamacpp import LlamaCppUnavailable, ensure_llamacpp
    from plait.loading.sources import resolve_model

    model = resolve_model(args.model)
    try:
        if model.suffix != ".gguf":
            raise LlamaCppUnavailable(f"{model} is not a GGUF file")
        paths = ensure_llamacpp()
    except LlamaCppUnavailable as exc:
        print(f"llama.cpp baseline skipped: {exc}", file=sys.stderr)
        return None
    n = len(workload)
    case = {"paths": paths, "model": str(model), "version": paths.version, "threads": torch.get_num_threads(),
            "input_len": round(workload.prompt_tokens / n), "output_len": round(workload.output_tokens / n),
            "parallel": min(llm.config.max_num_seqs, n), "rows": [], "format": "file", "format_probe": []}
    return pick_llamacpp_format(case, getattr(args, "llamacpp_formats", "file"))


def pick_llamacpp_format(case: dict[str, Any], formats: str) -> dict[str, Any]:
    """Convert the GGUF to each of `formats` and keep the fastest for this workload (one probe pass each), so the
    baseline is llama.cpp's best configuration, not a convenient one. A format that cannot be made is skipped."""
    from plait.bench.llamacpp import LlamaCppUnavailable, convert_format

    names = [f.strip().lower() for f in formats.split(",") if f.strip()]
    if names == ["file"] or not names:
        return case
    source, best = case["model"], None
    for name in names:
        try:
            path = convert_format(case["paths"], source, name, case["threads"])
            probe = run_llamacpp(dict(case, model=str(path), rows=[]))
        except LlamaCppUnavailable as exc:
            print(f"llama.cpp format {name} skipped: {exc}", file=sys.stderr)
            continue
        case["format_probe"].append({"format": name, "model": str(path), "output_tps": probe.output_tps})
        print(f"llama.cpp probe: {name} {probe.output_tps:.1f} output tok/s", file=sys.stderr, flush=True)
        if best is None or probe.output_tps > best[1]:
            best = (name, probe.output_tps, str(path))
    if best is not None:
        case["format"], case["model"] = best[0], best[2]
    return case


def run_llamacpp(case: dict[str, Any]) -> Throughput:
    """One llama-batched-bench case. Output tok/s is vLLM's offline definition, generated tokens over the whole
    wall time including prefill: B*TG / T (T = T_PP + T_TG), not llama.cpp's decode-only S_TG."""
    from plait.bench.llamacpp import run_batched_bench

    row = run_batched_bench(case["paths"], case["model"], case["input_len"], case["output_len"],
                            case["parallel"], case["threads"])
    case["rows"].append(row)
    b = row["b"]
    return Throughput(row["t"], b * row["pp"], b * row["tg"], b, prefill_tokens=b * row["pp"])


def run_offline(args: argparse.Namespace, llm: Any = None, hf_model: Any = None) -> dict[str, Any]:
    """Run the benchmark described by `args`; `llm`/`hf_model` may be prebuilt (tests pass tiny ones)."""
    from plait.engine.args import engine_kwargs

    if llm is None:
        from plait.engine.llm import LLM

        llm = LLM(**engine_kwargs(args))
    if args.workload == "fork":
        return run_fork(args, llm)
    repeats = args.repeats or 1
    progress = not args.no_tqdm
    workload = build_workload(args, llm.tokenizer)
    baselines = set(args.baseline.split(","))
    want_hf = "hf" in baselines
    llamacpp = prepare_llamacpp(args, llm, workload) if "llama.cpp" in baselines else None
    if want_hf and hf_model is None:
        hf_model = load_baseline(args, llm)
    hf_workload = workload.subset(args.hf_num_prompts or min(len(workload), 64)) if want_hf else None
    hf_batch = args.hf_batch_size or min(llm.config.max_num_seqs, 64)
    if not args.no_warmup:
        warm_up(llm, hf_model if want_hf else None, llm.tokenizer)

    plait_runs: list[Throughput] = []
    hf_runs: list[Throughput] = []
    llamacpp_runs: list[Throughput] = []
    for _ in range(repeats):
        reset_prefix_cache(llm)
        plait_runs.append(run_plait(llm, workload, progress))
        if want_hf:
            from plait.bench.hf_baseline import run_hf_batches

            hf_runs.append(run_hf_batches(hf_model, hf_workload, hf_batch, progress))
        if llamacpp is not None:
            from plait.bench.llamacpp import LlamaCppUnavailable

            try:
                llamacpp_runs.append(run_llamacpp(llamacpp))
            except LlamaCppUnavailable as exc:
                print(f"llama.cpp baseline dropped: {exc}", file=sys.stderr)
                llamacpp, llamacpp_runs = None, []

    result = summarize(args, llm, workload, plait_runs, hf_runs, hf_workload, hf_batch, llamacpp_runs, llamacpp)
    print(format_result(result))
    path = report.save_json(args.output or report.default_output("offline"), result)
    print(f"results saved to {path}")
    return result


def _medians(runs: list[Throughput]) -> dict[str, float]:
    return {k: report.median([getattr(r, k) for r in runs]) for k in ("wall_s", "output_tps", "total_tps")}


def summarize(args: argparse.Namespace, llm: Any, workload: Workload, plait_runs: list[Throughput],
              hf_runs: list[Throughput], hf_workload: Workload | None, hf_batch: int,
              llamacpp_runs: list[Throughput] = (), llamacpp: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the JSON holds: config, machine, per-run numbers, medians and per-pair ratios."""
    from plait.engine.args import engine_kwargs

    dtype = engine_dtype_name(llm)
    result: dict[str, Any] = {
        "benchmark": "offline",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "config": {
            "workload": args.workload, "num_prompts": len(workload), "input_len": args.input_len,
            "input_len_range": [args.min_input_len, args.max_input_len], "output_len": args.output_len,
            "seed": args.seed, "repeats": len(plait_runs), "warmup": not args.no_warmup,
            "sampling": {"temperature": 0, "ignore_eos": True},
            "engine": engine_kwargs(args),
            "max_num_seqs": llm.config.max_num_seqs, "max_num_batched_tokens": llm.config.token_budget(offline=True),
            "workload_description": workload.describe(),
            **({"shared_prefix": {k: getattr(args, k) for k in ("num_groups", "prompts_per_group", "prefix_len",
                                                                 "question_len")}}
               if args.workload == "shared-prefix" else {}),
        },
        "machine": report.machine_info(dtype),
        "plait": {"runs": [r.to_dict() for r in plait_runs], "median": _medians(plait_runs),
                  "load_seconds": llm.load_seconds},
        "peak_rss": {"kib": (rss := peak_rss_kib()), "mib": rss / 1024,
                     "source": "getrusage(RUSAGE_SELF).ru_maxrss of the benchmark process, which runs the engine",
                     "includes": ["plait"] + (["hf"] if hf_runs else [])},
    }
    if hf_runs:
        out_ratios = report.ratios([r.output_tps for r in plait_runs], [r.output_tps for r in hf_runs])
        total_ratios = report.ratios([r.total_tps for r in plait_runs], [r.total_tps for r in hf_runs])
        result["hf"] = {"runs": [r.to_dict() for r in hf_runs], "median": _medians(hf_runs),
                        "num_prompts": len(hf_workload), "batch_size": hf_batch, "dtype": dtype,
                        "padding": "left, static batches, prompts sorted by length"}
        result["ratio"] = {"output_tps_per_pair": out_ratios, "output_tps_median": report.median(out_ratios),
                           "total_tps_per_pair": total_ratios, "total_tps_median": report.median(total_ratios)}
    if llamacpp_runs:
        out_ratios = report.ratios([r.output_tps for r in plait_runs], [r.output_tps for r in llamacpp_runs])
        total_ratios = report.ratios([r.total_tps for r in plait_runs], [r.total_tps for r in llamacpp_runs])
        result["llama.cpp"] = {
            "runs": [r.to_dict() for r in llamacpp_runs], "median": _medians(llamacpp_runs),
            "num_prompts": llamacpp["parallel"], "tool": "llama-batched-bench", "version": llamacpp["version"],
            "model": llamacpp["model"], "format": llamacpp.get("format", "file"),
            "format_probe": llamacpp.get("format_probe", []),
            "threads": llamacpp["threads"], "parallel": llamacpp["parallel"],
            "input_len": llamacpp["input_len"], "output_len": llamacpp["output_len"],
            "batched_bench_rows": llamacpp["rows"],
            "output_tps_definition": "B*TG / T: generated tokens over the whole time, prefill included (vLLM's "
                                     "offline output tok/s), not llama.cpp's decode-only S_TG",
        }
        result["ratio_llama.cpp"] = {"output_tps_per_pair": out_ratios, "output_tps_median": report.median(out_ratios),
                                     "total_tps_per_pair": total_ratios, "total_tps_median": report.median(total_ratios)}
    return result


def format_result(result: dict[str, Any]) -> str:
    """The printed table: one row per engine (per run too when repeated), then the plait/HF ratio."""
    cfg, machine = result["config"], result["machine"]
    lines = [f"\nplait bench offline: {cfg['workload_description']}",
             f"max_num_seqs {cfg['max_num_seqs']}, {machine['dtype']}, {machine['torch_threads']} threads, "
             f"{cfg['repeats']} repeat(s)\n"]
    headers = ["engine", "prompts", "wall s", "output tok/s", "total tok/s", "prefill tok"]
    rows: list[list[Any]] = []
    engines = [("plait", "plait", cfg["num_prompts"])]
    if "hf" in result:
        engines.append((f"hf (batch {result['hf']['batch_size']})", "hf", result["hf"]["num_prompts"]))
    if "llama.cpp" in result:
        lc = result["llama.cpp"]
        engines.append((f"llama.cpp {lc.get('format', 'file')} (B {lc['parallel']})", "llama.cpp", lc["num_prompts"]))
    for name, key, n in engines:
        data = result[key]
        runs = data["runs"]
        for i, run in enumerate(runs):
            label = name if len(runs) == 1 else f"{name} #{i + 1}"
            rows.append([label, n, run["wall_s"], run["output_tps"], run["total_tps"],
                         run["prefill_tokens"] if run["prefill_tokens"] is not None else run["prompt_tokens"]])
        if len(runs) > 1:
            m = data["median"]
            rows.append([f"{name} median", n, m["wall_s"], m["output_tps"], m["total_tps"], ""])
    lines.append(report.table(headers, rows))
    if "peak_rss" in result:
        rss = result["peak_rss"]
        extra = " (the HF baseline ran in the same process and is included)" if "hf" in rss["includes"] else ""
        lines.append(f"\npeak RSS of the engine process: {rss['mib']:,.0f} MiB{extra}")
    if "ratio" in result:
        r = result["ratio"]
        pairs = ", ".join(f"{x:.2f}x" for x in r["output_tps_per_pair"])
        lines.append(f"\nplait / hf output tok/s: {r['output_tps_median']:.2f}x "
                     f"(total tok/s {r['total_tps_median']:.2f}x; per pair: {pairs})")
        if result["hf"]["num_prompts"] != cfg["num_prompts"]:
            lines.append(f"note: HF ran the first {result['hf']['num_prompts']} of {cfg['num_prompts']} prompts; "
                         f"rates (tok/s) are compared, not wall times")
    if "ratio_llama.cpp" in result:
        r, lc = result["ratio_llama.cpp"], result["llama.cpp"]
        pairs = ", ".join(f"{x:.2f}x" for x in r["output_tps_per_pair"])
        lines.append(f"\nplait / llama.cpp output tok/s: {r['output_tps_median']:.2f}x "
                     f"(total tok/s {r['total_tps_median']:.2f}x; per pair: {pairs})")
        lines.append(f"note: llama.cpp {lc['version']} = llama-batched-bench, {lc['parallel']} sequences of "
                     f"{lc['input_len']} + {lc['output_len']} tokens in one wave, {lc['threads']} threads, on "
                     f"{lc['model']}; its output tok/s = B*TG / T, prefill included (vLLM's offline definition)")
        if lc.get("format_probe"):
            probes = ", ".join(f"{p['format']} {p['output_tps']:.1f}" for p in lc["format_probe"])
            lines.append(f"llama.cpp format: {lc['format']}, the fastest of one probe pass each ({probes} output "
                         f"tok/s)")
    return "\n".join(lines)
