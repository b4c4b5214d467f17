"""`plait bench weight-update`: what `update_weights` costs on a real model, by kind of update.

An RL trainer swaps the policy's weights every few steps, and the engine computes nothing during the swap, so
its time is throughput lost. Four kinds, each repeated: the checkpoint file read again (path), the full state dict
from memory (what a colocated trainer holds), the same state dict sent in buckets (final=False ... final=True),
and a partial update (one decoder layer's tensors, partial=True). `prepare` runs in the caller's thread (read,
copy, check), `swap` in the engine thread between steps (revert transforms, load, re-apply them: prepacking and the
4-bit re-quantization included). Every update sends the model's own weights, so greedy tokens must not change:
the benchmark checks it and says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from plait.bench import report
from plait.params import SamplingParams


def add_weight_update_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--repeats", type=int, default=3, help="updates of each kind (the median is reported)")
    g.add_argument("--buckets", type=int, default=8, help="buckets of the bucketed update")
    g.add_argument("--output", "-o", default=None, help="JSON results path")


def _greedy(llm: Any) -> list[list[int]]:
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    outs = llm.generate(["The capital of France is", "def fibonacci(n):"], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def run_weight_update(args: argparse.Namespace) -> dict[str, Any]:
    from plait.engine.args import engine_kwargs
    from plait.engine.llm import LLM
    from plait.loading import load_model
    from plait.loading.sources import resolve_model

    if args.repeats < 1 or args.buckets < 1:
        raise ValueError("--repeats and --buckets must be at least 1")
    kwargs = engine_kwargs(args)
    llm = LLM(**kwargs)
    path = str(resolve_model(kwargs.get("model")))
    before = _greedy(llm)
    weights = dict(load_model(path, dtype=llm._built.dtype).weights)
    names = sorted(weights)
    index = min(3, llm._built.model_config.num_layers - 1)
    layer = {n: weights[n] for n in names if f".layers.{index}." in n}
    rows: dict[str, list[dict[str, float]]] = {"path": [], "state_dict": [], "buckets": [], "partial": []}
    version = 0

    def timed(kind, call):
        nonlocal version
        version += 1
        start = time.perf_counter()
        info = call(version)
        rows[kind].append({"prepare_s": info.prepare_seconds, "swap_s": info.swap_seconds,
                           "total_s": time.perf_counter() - start})

    def bucketed(v):
        parts = [{n: weights[n] for n in names[i::args.buckets]} for i in range(args.buckets)]
        staged = sum(llm.update_weights(part, v, final=False).prepare_seconds for part in parts[:-1])
        info = llm.update_weights(parts[-1], v)
        info.prepare_seconds += staged  # every bucket's checks and copies
        return info

    for _ in range(args.repeats):
        timed("path", lambda v: llm.update_weights(path, v))
        timed("state_dict", lambda v: llm.update_weights(weights, v))
        timed("buckets", bucketed)
        timed("partial", lambda v: llm.update_weights(layer, v, partial=True))
    unchanged = _greedy(llm) == before
    result = {
        "benchmark": "weight_update",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "machine": report.machine_info(str(llm._built.dtype).replace("torch.", "")),
        "config": {"repeats": args.repeats, "buckets": args.buckets, "engine": kwargs, "source": path,
                   "transforms": [t.name for t in llm._built.weight_transforms],
                   "num_tensors": len(weights), "partial_tensors": len(layer)},
        "kinds": {kind: {key: report.median([r[key] for r in runs]) for key in ("prepare_s", "swap_s", "total_s")}
                  for kind, runs in rows.items()},
        "runs": rows,
        "greedy_tokens_unchanged": unchanged,
    }
    print(format_weight_update(result))
    out = report.save_json(args.output or report.default_output("weight-update"), result)
    print(f"results saved to {out}")
    return result


def format_weight_update(result: dict[str, Any]) -> str:
    cfg = result["config"]
    labels = {"path": "from the file", "state_dict": f"state dict ({cfg['num_tensors']} tensors)",
              "buckets": f"state dict in {cfg['buckets']} buckets",
              "partial": f"partial ({cfg['partial_tensors']} tensors, one layer)"}
    rows = [[labels[k]] + [f"{v[key]:.2f}" for key in ("prepare_s", "swap_s", "total_s")]
            for k, v in result["kinds"].items()]
    return (f"\nplait bench weight-update: medians of {cfg['repeats']}, transforms {cfg['transforms'] or 'none'}\n"
            + report.table(["update", "prepare s", "swap s", "total s"], rows)
            + f"\ngreedy tokens unchanged after updating with the model's own weights: "
              f"{'yes' if result['greedy_tokens_unchanged'] else 'NO'}")
