"""`plait bench overhead`: the engine's own time per step, outside the model, over one long generation.

Everything a step does besides the model's forward and LM head (scheduling, building the batch, sampling with
penalties, output processing in the frontend) should cost the same at token 8,000 as at token 100: per-request
state is kept incrementally, so nothing is rebuilt from the whole sequence each step. This benchmark drives the
engine core by hand for one request, times every step, subtracts the model's share (timed by wrapping the model's
forward and compute_logits), and compares a window early in the generation with one at its end.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from plait.bench import report
from plait.params import SamplingParams


def add_overhead_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--output-len", type=int, default=8000, help="tokens generated (EOS ignored)")
    g.add_argument("--window", type=int, default=100, help="steps per measured window")
    g.add_argument("--early", type=int, default=100, help="the early window starts at this output token")
    g.add_argument("--repetition-penalty", type=float, default=1.1,
                   help="exercise the penalty path too (1 turns it off)")
    g.add_argument("--frequency-penalty", type=float, default=0.1)
    g.add_argument("--output", "-o", default=None, help="JSON results path")


class _ModelTimer:
    """Wraps a model's forward and compute_logits (as instance attributes) and adds up their time."""

    def __init__(self, model: Any) -> None:
        self.seconds = 0.0
        self.model = model
        self._forward, self._logits = model.forward, model.compute_logits
        model.forward = self._timed(self._forward)
        model.compute_logits = self._timed(self._logits)

    def _timed(self, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return run

    def restore(self) -> None:
        del self.model.forward
        del self.model.compute_logits


def measure_overhead(llm: Any, output_len: int, params: SamplingParams) -> list[tuple[float, float]]:
    """(step seconds, model seconds) for each step of one greedy request of `output_len` tokens."""
    from plait.engine.output_processor import RequestState

    core = llm.engine
    if core.has_unfinished():
        raise ValueError("the overhead benchmark needs an idle engine")
    timer = _ModelTimer(core.runner.model)
    prompt = llm.tokenizer.encode("Write a very long story about a lighthouse keeper.")
    state = RequestState("overhead", None, prompt, params, llm.tokenizer)
    steps = []
    try:
        core.add_request("overhead", prompt, params)
        while core.has_unfinished():
            timer.seconds = 0.0
            start = time.perf_counter()
            for out in core.step():
                for index, stop in state.process(out):
                    core.finish_sample(out.request_id, index, stop)
            if state.samples[0].token_ids:
                state.output("delta")  # what a streaming reader costs each step
            steps.append((time.perf_counter() - start, timer.seconds))
    finally:
        timer.restore()
        core.abort("overhead")
    return steps


def run_overhead(args: argparse.Namespace, llm: Any = None) -> dict[str, Any]:
    from plait.engine.args import engine_kwargs

    if llm is None:
        from plait.engine.llm import LLM

        llm = LLM(**engine_kwargs(args))
    params = SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True,
                            repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty)
    steps = measure_overhead(llm, args.output_len, params)
    decode = steps[1:]  # step 0 is the prompt
    early = decode[args.early: args.early + args.window]
    late = decode[-args.window:]

    def window(rows):
        return {"overhead_ms": report.median([(s - m) * 1000 for s, m in rows]),
                "model_ms": report.median([m * 1000 for _, m in rows]),
                "step_ms": report.median([s * 1000 for s, _ in rows])}

    result = {
        "benchmark": "overhead",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "config": {"output_len": args.output_len, "window": args.window, "early": args.early,
                   "repetition_penalty": args.repetition_penalty, "frequency_penalty": args.frequency_penalty,
                   "engine": engine_kwargs(args)},
        "early": dict(window(early), tokens=[args.early, args.early + len(early)]),
        "late": dict(window(late), tokens=[len(decode) - len(late), len(decode)]),
    }
    result["late_over_early"] = result["late"]["overhead_ms"] / max(result["early"]["overhead_ms"], 1e-9)
    print(format_overhead(result))
    path = report.save_json(args.output or report.default_output("overhead"), result)
    print(f"results saved to {path}")
    return result


def format_overhead(result: dict[str, Any]) -> str:
    headers = ["window (output tokens)", "engine overhead ms/step", "model ms/step", "step ms"]
    rows = [[f"{r['tokens'][0]}-{r['tokens'][1]}", r["overhead_ms"], r["model_ms"], r["step_ms"]]
            for r in (result["early"], result["late"])]
    return ("\nplait bench overhead: one request, medians per window (overhead = step - model forward - LM head)\n"
            + report.table(headers, rows)
            + f"\nlate / early overhead: {result['late_over_early']:.2f}x")
