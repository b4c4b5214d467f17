"""`plait bench serve`: a load generator for any OpenAI-compatible server, reporting what `vllm bench serve` does.

Prompts are token ids from a seeded workload (plait.bench.workloads), sent to /v1/completions, so plait and
another server on the same model (llama.cpp's llama-server, vLLM) see exactly the same tokens and produce exactly
`--output-len` tokens each (`ignore_eos`). Every request streams; timings are taken at the client:

- TTFT: request sent -> first chunk carrying text.   E2E: request sent -> last chunk.
- TPOT: (E2E - TTFT) / (output tokens - 1), per request.   ITL: gaps between successive text chunks.
- Throughput over the benchmark's wall time: requests/s, output tokens/s, total (prompt + output) tokens/s.
- Goodput (`--goodput ttft:MS tpot:MS e2el:MS`, any subset): completed requests meeting every given SLO, per second.
Arrivals are a Poisson process at `--request-rate` (default: all at once), capped by `--concurrency` (one run per
value of `--concurrency 1,8,32`; `--max-concurrency N` is the one-value form). Running several concurrencies,
repeats and the llama.cpp baseline, and the JSON they write, is plait.bench.serve_sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from plait.bench import report
from plait.bench.workloads import WORKLOADS, Workload, add_extra_workload_args, workload_from_args

PERCENTILES = (50, 90, 99)
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """vLLM's `--goodput` syntax: KEY:MS pairs, KEY in ttft/tpot/e2el, MS >= 0 -> {key: milliseconds}."""
    slos: dict[str, float] = {}
    for item in items or ():
        key, sep, value = item.partition(":")
        key = key.strip().lower()
        if not sep or key not in GOODPUT_METRICS:
            raise ValueError(f"invalid goodput SLO {item!r}: use KEY:MILLISECONDS with KEY in "
                             f"{', '.join(GOODPUT_METRICS)} (e.g. ttft:500 tpot:50)")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"invalid goodput SLO {item!r}: {value!r} is not a number of milliseconds") from None
        if not ms >= 0:
            raise ValueError(f"invalid goodput SLO {item!r}: milliseconds must be >= 0")
        slos[key] = ms
    return slos


def _goodput_item(text: str) -> str:
    try:
        parse_goodput([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_concurrency_list(text: str) -> list[int]:
    """`--concurrency` syntax: comma-separated integers >= 1, each once, e.g. "1,8,32" -> [1, 8, 32] (in the order
    given, which is the order they run in)."""
    values: list[int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"invalid concurrency list {text!r}: {item!r} is not an integer "
                             f"(use comma-separated integers >= 1, e.g. 1,8,32)") from None
        if value < 1:
            raise ValueError(f"invalid concurrency list {text!r}: {value} is below 1 (requests in flight at most)")
        if value in values:
            raise ValueError(f"invalid concurrency list {text!r}: {value} is given twice")
        values.append(value)
    return values


def _concurrency_list(text: str) -> list[int]:
    try:
        return parse_concurrency_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _one_concurrency(text: str) -> list[int]:
    """--max-concurrency N: the same as --concurrency N (one value, stored in the same place)."""
    values = _concurrency_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"--max-concurrency takes one value, got {text!r}; "
                                         f"use --concurrency for a list")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `serve` under `plait bench`'s sub-parsers."""
    p = subparsers.add_parser("serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="load-test a running OpenAI-compatible server (plait, llama-server, vLLM)",
                              description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("target")
    g.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root (without /v1)")
    g.add_argument("--model", default=None, help="model name to send (default: the first of GET /v1/models)")
    g.add_argument("--api-key", default=None, help="Bearer token, if the server wants one")
    g.add_argument("--tokenizer", default=None,
                   help="model whose vocabulary the prompt ids are drawn from (default: plait's default model)")
    w = p.add_argument_group("workload")
    w.add_argument("--workload", choices=WORKLOADS, default="fixed")
    w.add_argument("--num-prompts", type=int, default=128)
    w.add_argument("--input-len", type=int, default=128, help="prompt tokens (fixed workload)")
    w.add_argument("--min-input-len", type=int, default=64, help="shortest prompt (random workload)")
    w.add_argument("--max-input-len", type=int, default=512, help="longest prompt (random workload)")
    w.add_argument("--output-len", type=int, default=128, help="tokens generated per request (EOS ignored)")
    w.add_argument("--seed", type=int, default=0)
    add_extra_workload_args(w)
    r = p.add_argument_group("load")
    r.add_argument("--request-rate", type=float, default=float("inf"),
                   help="mean arrivals per second (Poisson); inf sends everything at once")
    cap = r.add_mutually_exclusive_group()
    cap.add_argument("--concurrency", type=_concurrency_list, default=None, metavar="C1,C2,...",
                     help="requests in flight at most; a comma-separated list (e.g. 1,8,32) runs the workload once "
                          "per value and saves them all in one JSON; none given: every request at once")
    cap.add_argument("--max-concurrency", dest="concurrency", type=_one_concurrency, default=None, metavar="N",
                     help="the same as --concurrency N")
    r.add_argument("--repeats", type=_positive_int, default=1,
                   help="runs per concurrency; with --baseline they alternate server / baseline (A B A B) and the "
                        "JSON has medians and per-pair ratios. Each repeat draws its prompts with seed "
                        "--seed + run index, so no run is served from a prefix cache an earlier run filled")
    r.add_argument("--warmup", type=int, default=1, help="untimed requests sent first")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    r.add_argument("--goodput", nargs="+", type=_goodput_item, default=None, metavar="KEY:MS",
                   help="SLOs in ms, e.g. ttft:500 tpot:50 e2el:5000 (vLLM's syntax); goodput = completed "
                        "requests meeting every given SLO, per second")
    r.add_argument("--server-pid", type=int, default=None,
                   help="pid of the server at --base-url when it runs on this machine: its peak RSS (VmHWM from "
                        "/proc/PID/status) is reported; otherwise peak RSS is not reported")
    b = p.add_argument_group("baseline")
    b.add_argument("--baseline", choices=["none", "llama.cpp"], default="none",
                   help="llama.cpp: for each concurrency, start llama-server on the same GGUF (--tokenizer's, "
                        "default plait's default model) with --parallel = that concurrency, --cont-batching, 2 "
                        "threads, loopback only; after each run against --base-url run the same load against it; "
                        "report its peak RSS; stop it; compare")
    p.add_argument("--output", "-o", default=None, help="JSON results path (default results/bench-serve-<time>.json)")
    p.set_defaults(func=run_serve_bench)
    return p


@dataclass
class RequestResult:
    prompt_len: int
    ok: bool = False
    error: str | None = None
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        return (self.latency - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


async def send_one(client: Any, url: str, headers: dict[str, str], model: str, prompt: list[int],
                   output_len: int, timeout: float) -> RequestResult:
    """One streaming completion; times every chunk that carries text."""
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    res = RequestResult(prompt_len=len(prompt))
    chunks, usage_tokens = 0, None
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                payload = json.loads(data)
                if "error" in payload:
                    res.error = str(payload["error"])
                    return res
                if payload.get("usage"):
                    usage_tokens = payload["usage"].get("completion_tokens")
                if any(c.get("text") for c in payload.get("choices") or ()):
                    now = time.perf_counter()
                    if chunks == 0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
                    chunks += 1
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash of the benchmark
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    res.latency = last - start
    res.output_tokens = usage_tokens if usage_tokens is not None else chunks
    res.ok = chunks > 0
    if not res.ok:
        res.error = "no text received"
    return res


def is_good(r: RequestResult, slos: dict[str, float]) -> bool:
    """Whether a completed request meets every SLO (ms); a one-token output's TPOT counts as 0, as in vLLM."""
    values = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.latency}
    return r.ok and all(values[k] * 1000 <= ms for k, ms in slos.items())


def summarize(results: list[RequestResult], duration: float,
              slos: dict[str, float] | None = None) -> dict[str, Any]:
    """vLLM's serving metrics (times in ms) over the successful requests; goodput when `slos` are given."""
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    summary: dict[str, Any] = {
        "completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out_tokens / duration if duration else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration else 0.0,
    }
    series = {"ttft": [r.ttft for r in ok], "tpot": [r.tpot for r in ok if r.tpot is not None],
              "itl": [x for r in ok for x in r.itl], "e2el": [r.latency for r in ok]}
    for name, values in series.items():
        ms = [v * 1000 for v in values]
        summary[f"mean_{name}_ms"] = statistics.fmean(ms) if ms else None
        summary[f"median_{name}_ms"] = statistics.median(ms) if ms else None
        for p in PERCENTILES[1:]:
            summary[f"p{p}_{name}_ms"] = _percentile(ms, p)
    if slos:
        good = sum(is_good(r, slos) for r in ok)
        summary["goodput_slos_ms"] = dict(slos)
        summary["good_requests"] = good
        summary["request_goodput"] = good / duration if duration else 0.0
    errors = [r.error for r in results if not r.ok]
    summary["errors"] = errors[:10]
    return summary


def _percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), without needing numpy here."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def run_load(args: argparse.Namespace, workload: Workload, model: str, base_url: str | None = None,
                   concurrency: int | None = None) -> tuple[list[RequestResult], float]:
    """Send the workload (after args.warmup untimed requests) with at most `concurrency` requests in flight
    (None: all at once); returns every request's result and the wall time of the timed part."""
    import httpx

    url = (base_url or args.base_url).rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limit = concurrency or len(workload)
    sem = asyncio.Semaphore(limit)
    rng = random.Random(args.seed)
    # TCP_NODELAY: httpx writes a POST's headers and body separately; with Nagle on, the body waits for the
    # server's delayed ACK (~40 ms on Linux), which would land in every TTFT.
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=limit + 4, max_keepalive_connections=limit + 4),
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(transport=transport, timeout=args.timeout) as client:
        for i in range(args.warmup):
            # reversed: the same length, but none of the timed prompts' leading blocks, so the warm-up does not
            # put a timed prompt into the server's prefix cache
            warm = workload.prompts[i % len(workload)][::-1]
            await send_one(client, url, headers, model, warm, 4, args.timeout)

        async def limited(prompt: list[int], output_len: int) -> RequestResult:
            async with sem:
                return await send_one(client, url, headers, model, prompt, output_len, args.timeout)

        tasks = []
        start = time.perf_counter()
        for prompt, output_len in zip(workload.prompts, workload.output_lens):
            tasks.append(asyncio.ensure_future(limited(prompt, output_len)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def _vocabulary(name: str | None) -> tuple[int, set[int]]:
    """(vocab size, special ids) of the tokenizer the prompts are drawn for; special ids are never sent."""
    tok = _load_tokenizer(name)
    return tok.vocab_size, set(tok.all_special_ids)


def _load_tokenizer(name: str | None) -> Any:
    """The tokenizer of the model the prompts are made for (its chat template is the chat workload's)."""
    from pathlib import Path

    from plait.loading.sources import resolve_model
    from plait.loading.tokenizer import Tokenizer

    path = Path(resolve_model(name))
    if path.is_dir():
        tok = Tokenizer.from_hf_dir(path)
    else:
        from plait.loading.gguf_file import read_gguf

        tok = Tokenizer.from_gguf_metadata(read_gguf(path).metadata)
    return tok


def _first_model(args: argparse.Namespace, base_url: str | None = None) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    r = httpx.get((base_url or args.base_url).rstrip("/") + "/v1/models", headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()["data"][0]


def _served_model(args: argparse.Namespace, base_url: str | None = None) -> str:
    return _first_model(args, base_url)["id"]


def measure(args: argparse.Namespace, base_url: str, workload: Workload, model: str,
            concurrency: int | None) -> dict[str, Any]:
    """One timed run of the workload against one server: its summary (see `summarize`)."""
    results, duration = asyncio.run(run_load(args, workload, model, base_url, concurrency))
    return summarize(results, duration, parse_goodput(getattr(args, "goodput", None)))


def print_summary(summary: dict[str, Any], title: str) -> None:
    """vLLM's two tables for one run: counts and throughput, then latency percentiles."""
    print(f"\n{title}")
    goodput_rows = ([["request goodput (req/s)", report.fmt(summary["request_goodput"], 2)],
                     ["good requests (" + " ".join(f"{k}<={v:g}ms" for k, v in summary["goodput_slos_ms"].items())
                      + ")", f"{summary['good_requests']} / {summary['completed']}"]]
                    if "request_goodput" in summary else [])
    print(report.table(["metric", "value"], [
        ["completed / failed", f"{summary['completed']} / {summary['failed']}"],
        ["duration (s)", report.fmt(summary["duration_s"], 2)],
        ["request throughput (req/s)", report.fmt(summary["request_throughput"], 2)],
        *goodput_rows,
        ["output throughput (tok/s)", report.fmt(summary["output_throughput"], 1)],
        ["total throughput (tok/s)", report.fmt(summary["total_token_throughput"], 1)]]))
    rows = [[name.upper()] + [report.fmt(summary[f"{stat}_{name}_ms"], 1) for stat in ("mean", "median", "p90", "p99")]
            for name in ("ttft", "tpot", "itl", "e2el")]
    print(report.table(["ms", "mean", "median", "p90", "p99"], rows))
    for err in summary["errors"][:3]:
        print(f"error: {err}")


def read_vmhwm_kib(pid: int, proc: str = "/proc") -> int | None:
    """Peak resident set size of process `pid` in KiB: VmHWM of PROC/PID/status, which Linux keeps for the
    process's whole life (so it can be read once, at the end). None when the file has no VmHWM line; OSError when
    it cannot be read (no such process, not Linux)."""
    with open(f"{proc}/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def server_peak_rss_kib(base_url: str, pid: int | None) -> int | None:
    """The local server's peak RSS in KiB (VmHWM of /proc/PID/status), or None (reason printed) when the pid is
    not given, the server is not on this machine, or the process cannot be read."""
    import sys
    from urllib.parse import urlsplit

    if pid is None:
        return None
    host = urlsplit(base_url).hostname or ""
    if host not in ("localhost", "127.0.0.1", "::1", "0.0.0.0") and not host.startswith("127."):
        print(f"peak RSS not reported: {base_url} is not a local server", file=sys.stderr)
        return None
    try:
        kib = read_vmhwm_kib(pid)
    except OSError as exc:
        print(f"peak RSS not reported: cannot read process {pid}: {exc}", file=sys.stderr)
        return None
    if kib is None:
        print(f"peak RSS not reported: no VmHWM for process {pid}", file=sys.stderr)
    return kib


def run_serve_bench(args: argparse.Namespace) -> int:
    """Run the load at every --concurrency (and the baseline, if asked), print the tables, save the JSON; exit
    status 1 if some run against --base-url had no successful request."""
    from plait.bench.serve_sweep import run_serve_sweep

    served = _first_model(args)
    model = args.model or served["id"]
    tok = _load_tokenizer(args.tokenizer)
    special = set(tok.all_special_ids)

    def workload_for(seed: int) -> Workload:
        return workload_from_args(argparse.Namespace(**dict(vars(args), seed=seed)), tok.vocab_size, special, tok)

    payload = run_serve_sweep(args, model, workload_for)
    if served.get("owned_by"):  # who serves it ("plait", "llamacpp", ...): the report labels the system by it
        payload["engine"] = served["owned_by"]
    path = report.save_json(args.output or report.default_output("serve"), payload)
    print(f"saved {path}")
    return 0 if all(run["completed"] for entry in payload["results"] for run in entry["runs"]) else 1
