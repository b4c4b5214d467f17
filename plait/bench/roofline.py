"""`plait bench roofline`: this machine's ceilings, and each benchmark result as a fraction of its ceiling.

Two ceilings bound a decoder's token rate:

- **Memory bandwidth** at batch 1: every decode step reads all the weights once, so
  tokens/s <= bandwidth / bytes-of-weights-per-token. Fraction = tokens/s x bytes-per-token / bandwidth.
- **Matmul throughput** at large batch (and prefill): every token costs ~2 x params FLOPs, so
  tokens/s <= GFLOP/s / FLOPs-per-token. Fraction = tokens/s x FLOPs-per-token / GFLOP/s.

Both ignore attention over the context (small next to the weights at short contexts) and overheads; a
fraction near 1 means the engine is as fast as the hardware allows, not that the estimate is exact.
Ceilings are measured, not looked up: best of a few 2048^3 `torch.matmul` calls (fp32, bf16) and a
large-tensor sum for read bandwidth. The machine is shared and noisy, so take them as rough.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2,
               "int8": 1, "int4": 0.5}
GEMM_DTYPES = ("float32", "bfloat16")


# ------------------------------------------------------------------------------------------ measuring


def _best_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Best wall time of `repeats` calls after one untimed warm-up call."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync_for(device: Any) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def measure_gemm_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 3, device: str = "cpu") -> float:
    """GFLOP/s of an n x n x n `torch.matmul` in `dtype`: best of `repeats` (2 n^3 FLOPs per call)."""
    import torch

    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=dev, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, generator=g).to(device=dev, dtype=getattr(torch, dtype))
    seconds = _best_time(lambda: torch.matmul(a, b), repeats, _sync_for(dev))
    return 2 * n ** 3 / seconds / 1e9


def measure_read_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 5, device: str = "cpu") -> float:
    """Read bandwidth in GB/s (1e9 bytes/s): best time to sum an fp32 tensor of `nbytes` bytes."""
    import torch

    dev = torch.device(device)
    x = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=dev)
    seconds = _best_time(lambda: x.sum(), repeats, _sync_for(dev))
    return x.numel() * 4 / seconds / 1e9


def machine_ceilings(gemm_n: int = 2048, bandwidth_bytes: int = 256 << 20, repeats: int = 3,
                     device: str = "cpu", dtypes: tuple[str, ...] = GEMM_DTYPES) -> dict[str, Any]:
    """Measure the ceilings once: {"gemm_gflops": {dtype: GFLOP/s}, "bandwidth_gbs": GB/s, ...how measured}.

    A dtype the device cannot multiply (or multiplies absurdly slowly) is left out rather than failing.
    """
    import torch

    from plait.bench.report import machine_info

    gemm: dict[str, float] = {}
    errors: dict[str, str] = {}
    for dtype in dtypes:
        try:
            gemm[dtype] = measure_gemm_gflops(dtype, gemm_n, repeats, device)
        except (RuntimeError, TypeError) as exc:  # e.g. no bf16 matmul on this device
            errors[dtype] = f"{type(exc).__name__}: {exc}"
    result: dict[str, Any] = {
        "gemm_gflops": gemm,
        "bandwidth_gbs": measure_read_bandwidth_gbs(bandwidth_bytes, max(repeats, 3), device),
        "method": {"gemm": f"best of {repeats} torch.matmul {gemm_n}^3", "gemm_n": gemm_n,
                   "bandwidth": f"best of {max(repeats, 3)} sums of a {bandwidth_bytes / 2**20:.0f} MiB fp32 tensor",
                   "bandwidth_bytes": bandwidth_bytes, "device": device, "torch_threads": torch.get_num_threads()},
        "machine": machine_info(),
    }
    if errors:
        result["errors"] = errors
    return result


# ------------------------------------------------------------------------------------- model arithmetic


def dtype_bytes(dtype: str | None) -> float:
    """Bytes per weight for a dtype name ('bfloat16', 'float32', 'torch.bfloat16', 'bf16', ...)."""
    name = str(dtype or "float32").removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def model_params(cfg: Any) -> dict[str, int]:
    """Parameter counts of a plait ModelConfig.

    `total` counts every weight once (a tied embedding once). `per_token` counts the weights one token's forward
    multiplies or reads in full: all linear layers, the norms and the LM head (the embedding table when tied); an
    untied embedding table is excluded since only one row of it is read.
    """
    h, q = cfg.hidden_size, cfg.num_heads * cfg.head_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    attn = h * q + 2 * h * kv + q * h
    if cfg.attention_bias:
        attn += q + 2 * kv
    if cfg.qk_norm:
        attn += 2 * cfg.head_dim
    mlp = 3 * h * cfg.intermediate_size
    layer = attn + mlp + 2 * h  # + input and post-attention RMSNorm weights
    body = cfg.num_layers * layer + h  # + final norm
    embed = cfg.vocab_size * h
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h
    return {"total": body + embed + head, "per_token": body + (embed if cfg.tie_word_embeddings else head),
            "embedding": embed, "layers": cfg.num_layers * layer}


def per_token_costs(cfg: Any, dtype: str = "bfloat16", bytes_per_param: float | None = None) -> dict[str, float]:
    """Bytes of weights read and FLOPs spent per token for a ModelConfig (attention over the context ignored).

    bytes_per_token = per-token params x dtype size (or `bytes_per_param`, e.g. 0.5625 for 4-bit with scales);
    flops_per_token = 2 x per-token params (one multiply-add per weight).
    """
    params = model_params(cfg)
    size = bytes_per_param if bytes_per_param is not None else dtype_bytes(dtype)
    return {"params": params["total"], "params_per_token": params["per_token"], "bytes_per_param": size,
            "bytes_per_token": params["per_token"] * size, "flops_per_token": 2 * params["per_token"]}


def model_config_for(spec: str | None) -> Any:
    """The ModelConfig of a model (a .gguf file, an HF directory, or None for the default) without its weights."""
    from plait.config import ModelConfig
    from plait.loading.sources import resolve_model

    path = resolve_model(spec)
    if path.is_dir():
        return ModelConfig.from_hf(json.loads((path / "config.json").read_text()))
    from plait.loading.gguf_file import config_from_metadata, read_gguf

    gguf = read_gguf(path)
    return config_from_metadata(gguf.metadata, {t.name: t.shape for t in gguf.tensors})


# ------------------------------------------------------------------------------------------ fractions


def bandwidth_fraction(tokens_per_s: float, bytes_per_token: float, bandwidth_gbs: float) -> float:
    """Batch-1 decode: tokens/s x bytes-per-token / bandwidth (1.0 = weights streamed at full bandwidth)."""
    return tokens_per_s * bytes_per_token / (bandwidth_gbs * 1e9)


def compute_fraction(tokens_per_s: float, flops_per_token: float, gflops: float) -> float:
    """Large batch / prefill: tokens/s x FLOPs-per-token / GFLOP/s (1.0 = matmuls at the measured peak)."""
    return tokens_per_s * flops_per_token / (gflops * 1e9)


def result_rates(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The token rates in one results JSON, each tagged with the ceiling that bounds it.

    latency -> decode tok/s (bandwidth-bound, batch 1) and prefill tok/s (compute-bound) per engine;
    offline -> total tok/s (every prompt and output token runs through the weights; compute-bound) per engine;
    serve   -> total token throughput (compute-bound at concurrency > 1, bandwidth-bound at 1).
    """
    kind = result.get("benchmark")
    rates: list[dict[str, Any]] = []
    if kind in ("latency", "offline"):
        for engine, data in result.items():
            # engines hold "runs" and "median"; "ratio" holds a median too but is not an engine
            median = data.get("median") if isinstance(data, dict) and "runs" in data else None
            if not isinstance(median, dict):
                continue
            if kind == "latency":
                rates.append({"engine": engine, "metric": "decode tok/s", "tokens_per_s": median.get("decode_tps"),
                              "bound": "bandwidth"})
                rates.append({"engine": engine, "metric": "prefill tok/s",
                              "tokens_per_s": median.get("prefill_tps"), "bound": "compute"})
            else:
                rates.append({"engine": engine, "metric": "total tok/s", "tokens_per_s": median.get("total_tps"),
                              "bound": "compute"})
    elif kind == "serve":
        from plait.bench.results import serve_entries, serve_systems

        # each concurrency of a `--concurrency A,B` run; in each, the --base-url server, then any baseline nested
        # in it (e.g. "llama.cpp")
        entries = serve_entries(result)
        for entry in entries:
            for name, data in serve_systems(entry):
                one = (data.get("parallel") or entry.get("max_concurrency")) == 1
                label = f"{name} c={entry.get('max_concurrency') or 'all'}" if len(entries) > 1 else name
                rates.append({"engine": label, "metric": "output tok/s" if one else "total tok/s",
                              "tokens_per_s": data.get("output_throughput" if one else "total_token_throughput"),
                              "bound": "bandwidth" if one else "compute"})
    return [r for r in rates if isinstance(r["tokens_per_s"], (int, float)) and r["tokens_per_s"] == r["tokens_per_s"]]


def _gemm_ceiling(ceilings: dict[str, Any], dtype: str | None) -> tuple[str, float | None]:
    gemm = ceilings.get("gemm_gflops") or {}
    name = str(dtype or "float32").removeprefix("torch.")
    name = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}.get(name, name)
    if name in gemm:
        return name, gemm[name]
    if "float32" in gemm:
        return "float32", gemm["float32"]
    return name, None


def fraction_of_ceiling(result: dict[str, Any], model_bytes_per_token: float, flops_per_token: float,
                        ceilings: dict[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """Every token rate in `result` (a results JSON) as a fraction of the ceiling that bounds it.

    Returns {"benchmark", "dtype", "rows": [{engine, metric, tokens_per_s, bound, ceiling_tokens_per_s,
    fraction, bandwidth_fraction, compute_fraction}]}. `dtype` picks the GEMM ceiling (default: the result's
    machine.dtype, then float32). Both fractions are given; `fraction` is the one named by `bound`.
    """
    dtype = dtype or (result.get("machine") or {}).get("dtype")
    gemm_dtype, gflops = _gemm_ceiling(ceilings, dtype)
    bandwidth = ceilings.get("bandwidth_gbs")
    rows = []
    for rate in result_rates(result):
        tps = rate["tokens_per_s"]
        bw = bandwidth_fraction(tps, model_bytes_per_token, bandwidth) if bandwidth else None
        cf = compute_fraction(tps, flops_per_token, gflops) if gflops else None
        if rate["bound"] == "bandwidth":
            ceiling = bandwidth * 1e9 / model_bytes_per_token if bandwidth else None
            frac = bw
        else:
            ceiling = gflops * 1e9 / flops_per_token if gflops else None
            frac = cf
        rows.append(dict(rate, ceiling_tokens_per_s=ceiling, fraction=frac, bandwidth_fraction=bw,
                         compute_fraction=cf))
    return {"benchmark": result.get("benchmark"), "dtype": gemm_dtype, "rows": rows}


def token_ceilings(costs: dict[str, float], ceilings: dict[str, Any], dtype: str) -> dict[str, float | None]:
    """Tokens/s ceilings for a model: batch-1 decode (bandwidth) and large batch (compute)."""
    _, gflops = _gemm_ceiling(ceilings, dtype)
    bw = ceilings.get("bandwidth_gbs")
    return {"decode_batch1": bw * 1e9 / costs["bytes_per_token"] if bw else None,
            "large_batch": gflops * 1e9 / costs["flops_per_token"] if gflops else None}


# ---------------------------------------------------------------------------------------------- CLI


def add_roofline_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `roofline` under `plait bench`'s sub-parsers."""
    p = subparsers.add_parser("roofline", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="measure GEMM GFLOP/s and memory bandwidth; results as fractions of them",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--results", nargs="*", default=[],
                   help="results JSON files (or directories of them) to express as fractions of the ceilings")
    p.add_argument("--model", "-m", default=None,
                   help="model whose weights define bytes/FLOPs per token (default: each result's model, "
                        "else smollm2-135m)")
    p.add_argument("--dtype", default=None,
                   help="weight dtype for bytes per token (default: each result's dtype, else bfloat16)")
    p.add_argument("--bytes-per-param", type=float, default=None,
                   help="override bytes per weight, e.g. 0.5625 for 4-bit weights with scales")
    p.add_argument("--gemm-size", type=int, default=2048, help="n of the n^3 matmul")
    p.add_argument("--bandwidth-mib", type=int, default=256, help="size of the tensor summed for bandwidth")
    p.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ceilings", default=None,
                   help="read ceilings from this JSON (as written by --output) instead of measuring")
    p.add_argument("--output", "-o", default=None, help="write ceilings and fractions to this JSON")
    p.set_defaults(func=run_roofline)
    return p


def _result_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    return files


def _result_model_and_dtype(result: dict[str, Any]) -> tuple[str | None, str | None]:
    engine = (result.get("config") or {}).get("engine") or {}
    return engine.get("model"), (result.get("machine") or {}).get("dtype")


def run_roofline(args: argparse.Namespace) -> int:
    from plait.bench import report

    if args.ceilings:
        ceilings = json.loads(Path(args.ceilings).read_text())
        ceilings = ceilings.get("ceilings", ceilings)
    else:
        print(f"measuring ceilings ({args.gemm_size}^3 matmul, {args.bandwidth_mib} MiB sum, best of "
              f"{args.repeats}) ...")
        ceilings = machine_ceilings(args.gemm_size, args.bandwidth_mib << 20, args.repeats, args.device)
    rows = [[f"GEMM {d} (GFLOP/s)", v] for d, v in ceilings["gemm_gflops"].items()]
    rows.append(["memory read bandwidth (GB/s)", ceilings["bandwidth_gbs"]])
    print(report.table(["ceiling", "value"], rows))
    for dtype, err in (ceilings.get("errors") or {}).items():
        print(f"GEMM {dtype} not measured: {err}")

    configs: dict[str | None, Any] = {}

    def config_of(model: str | None) -> Any:
        if model not in configs:
            configs[model] = model_config_for(model)
        return configs[model]

    default_dtype = args.dtype or "bfloat16"
    try:
        costs = per_token_costs(config_of(args.model), default_dtype, args.bytes_per_param)
        tok = token_ceilings(costs, ceilings, default_dtype)
        print(f"\n{args.model or 'default model'} ({default_dtype}): {costs['params_per_token'] / 1e6:.1f}M weights "
              f"per token, {costs['bytes_per_token'] / 1e6:.0f} MB and {costs['flops_per_token'] / 1e9:.2f} GFLOP "
              f"per token -> ceilings: batch-1 decode {report.fmt(tok['decode_batch1'])} tok/s, "
              f"large batch {report.fmt(tok['large_batch'])} tok/s")
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        print(f"\n(no model ceilings: {exc})")

    fractions = []
    table_rows = []
    for path in _result_files(args.results):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {path}: {exc}")
            continue
        model, dtype = _result_model_and_dtype(result)
        model, dtype = args.model or model, args.dtype or dtype or "bfloat16"
        try:
            costs = per_token_costs(config_of(model), dtype, args.bytes_per_param)
        except (OSError, ValueError, KeyError, NotImplementedError) as exc:
            print(f"skipping {path}: no model config ({exc})")
            continue
        frac = fraction_of_ceiling(result, costs["bytes_per_token"], costs["flops_per_token"], ceilings, dtype)
        fractions.append({"file": str(path), "model": model, "dtype": dtype, **costs, **frac})
        for row in frac["rows"]:
            table_rows.append([path.name, row["engine"], row["metric"], row["tokens_per_s"], row["bound"],
                               row["ceiling_tokens_per_s"] if row["ceiling_tokens_per_s"] is not None else "-",
                               f"{row['fraction']:.1%}" if row["fraction"] is not None else "-"])
    if table_rows:
        print()
        print(report.table(["result", "engine", "metric", "tok/s", "bound", "ceiling tok/s", "of ceiling"],
                           table_rows))
        if any((row["fraction"] or 0) > 1 for f in fractions for row in f["rows"]):
            print("note: a fraction above 100% means the ceiling was measured low (a busy machine, or a GEMM "
                  "size this CPU runs slower than the model's shapes); measure again with more --repeats")
    elif args.results:
        print("no token rates found in the given results")
    if args.output:
        path = report.save_json(args.output, {"benchmark": "roofline", "ceilings": ceilings,
                                              "fractions": fractions})
        print(f"saved {path}")
    return 0
