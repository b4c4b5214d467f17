"""`plait bench lm-head`: the LM head of the shipped models read as exact Q8_0 int8 blocks (native/q8_gemm.c)
against the dense fp32 F.linear (MKL) it replaces, one step of M rows (M = sequences sampling in the step).

Same process, alternating, best of --repeats: only the ratios mean much on a shared machine. The weights are
random Q8_0 blocks of the real shapes (the kernel's speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from plait.bench import report

HEADS = {"smollm2-135m": (49152, 576), "gemma3-270m": (262144, 640)}


def add_lm_head_parser(sub: Any) -> None:
    p = sub.add_parser("lm-head", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="LM head: exact Q8_0 int8 blocks vs dense fp32 F.linear, per step size",
                       description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(HEADS), help=f"comma-separated, of {', '.join(HEADS)}")
    p.add_argument("--rows", default="1,2,4,8,16,32,64")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", "-o", default=None)
    p.set_defaults(func=run_lm_head_bench)


def q8_weights(vocab: int, hidden: int, seed: int = 0) -> tuple:
    """(int8 values, fp32 scales, the dense fp32 weight they make) with llama.cpp's Q8_0 layout."""
    import torch

    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-127, 128, (vocab, hidden), dtype=torch.int8, generator=g)
    values[:, ::32] = 127  # llama.cpp's scale puts every block's largest value at +-127
    scales = (torch.rand(vocab, hidden // 32, generator=g) * 1e-3).half().float()
    dense = (values.float().view(vocab, -1, 32) * scales.unsqueeze(-1)).view(vocab, hidden)
    return values, scales, dense


def run_lm_head_bench(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from plait.runner.native import load_kernels
    from plait.runner.q8_linear import kernel_usable

    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = load_kernels()
    if kernels is None or not kernel_usable(kernels):
        raise SystemExit("the Q8_0 kernel is not available on this machine (needs a C compiler, AVX2 and FMA)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in HEADS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; known: {', '.join(HEADS)}")
    rows_out, cases = [], []
    for model in models:
        vocab, hidden = HEADS[model]
        values, scales, dense = q8_weights(vocab, hidden)
        for m in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(m, hidden)
            out = torch.empty(m, vocab)

            def q8() -> None:
                kernels.q8_linear_f32(x.data_ptr(), values.data_ptr(), scales.data_ptr(), None, out.data_ptr(),
                                      m, vocab, hidden)

            best = {"mkl": float("inf"), "q8": float("inf")}
            with torch.inference_mode():
                for _ in range(args.repeats):
                    for name, op in (("mkl", lambda: F.linear(x, dense)), ("q8", q8)):
                        start = time.perf_counter()
                        op()
                        best[name] = min(best[name], time.perf_counter() - start)
            cases.append({"model": model, "vocab": vocab, "hidden": hidden, "rows": m,
                          "mkl_ms": best["mkl"] * 1e3, "q8_ms": best["q8"] * 1e3})
            rows_out.append([model, m, report.fmt(best["mkl"] * 1e3), report.fmt(best["q8"] * 1e3),
                             report.fmt(best["mkl"] / best["q8"], 2) + "x"])
    print(report.table(["model", "rows", "F.linear fp32 ms", "Q8_0 kernel ms", "speed-up"], rows_out))
    result = {"kind": "lm_head", "machine": report.machine_info("float32"), "threads": torch.get_num_threads(),
              "cases": cases}
    path = report.save_json(args.output or report.default_output("lm-head"), result)
    print(f"results saved to {path}")
    return 0
