"""`python -m plait.bench.small_linear`: the few-rows fp32 kernel against F.linear (MKL) on the default model's
linear shapes (one decoder layer's qkv, o, gate_up, down, x 30 layers, and the LM head), one step of M rows.

Prints the time of one step's matmuls for each M and the ratio, and saves JSON. Same process, alternating, best
of --repeats: only the ratios mean much on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from plait.bench import report

SHAPES = [(1728, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,2,4,5,8,12,16,32,64")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", "-o", default=None)
    args = p.parse_args(argv)
    from plait.runner.native import load_kernels
    from plait.runner.small_linear import kernel_usable

    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = load_kernels()
    if kernels is None or not kernel_usable(kernels):
        raise SystemExit("the few-rows kernel is not available on this machine (needs a C compiler, AVX2 and FMA)")
    fn = kernels.small_linear_f32
    weights = [torch.randn(n, k) * 0.05 for n, k in SHAPES]

    def kernel(x, w):
        y = torch.empty(x.shape[0], w.shape[0])
        fn(x.data_ptr(), w.data_ptr(), None, y.data_ptr(), x.shape[0], w.shape[0], w.shape[1])
        return y

    rows_out, cases = [], []
    for m in [int(r) for r in args.rows.split(",")]:
        xs = {k: torch.randn(m, k) for k in (576, 1536)}
        best = {"mkl": float("inf"), "kernel": float("inf")}
        with torch.inference_mode():
            for _ in range(args.repeats):
                for name, op in (("mkl", F.linear), ("kernel", kernel)):
                    start = time.perf_counter()
                    for w in weights:
                        op(xs[w.shape[1]], w)
                    best[name] = min(best[name], time.perf_counter() - start)
        cases.append({"rows": m, "mkl_ms": best["mkl"] * 1e3, "kernel_ms": best["kernel"] * 1e3})
        rows_out.append([m, report.fmt(best["mkl"] * 1e3), report.fmt(best["kernel"] * 1e3),
                         report.fmt(best["mkl"] / best["kernel"], 2) + "x"])
    print(report.table(["rows", "F.linear ms", "kernel ms", "speed-up"], rows_out))
    result = {"kind": "small_linear", "machine": report.machine_info("float32"),
              "threads": torch.get_num_threads(), "cases": cases}
    path = report.save_json(args.output or report.default_output("small-linear"), result)
    print(f"results saved to {path}")
    return result


if __name__ == "__main__":
    main()
