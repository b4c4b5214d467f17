"""plait's command line: generate, chat, pull, serve, bench."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from plait.config import EngineConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    d = EngineConfig()
    g = parser.add_argument_group("engine")
    g.add_argument("--model", "-m", default=None,
                   help="a .gguf file, a HuggingFace model directory, 'smollm2-135m' (the default) or "
                        "'gemma3-270m'")
    g.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and activations; auto = bf16 where the CPU/GPU supports it, else fp32")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    g.add_argument("--kv-cache-memory", default=None,
                   help="bytes for the KV cache pool, e.g. 2GiB (default: from free memory, at most 1 GiB)")
    g.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV block")
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="sequences running at once")
    g.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="token budget of one step = chunked prefill size (default: 2048 for generate and "
                        "offline benchmarks, 512 for serve and chat, which favour steady streaming)")
    g.add_argument("--max-model-len", type=int, default=None, help="context length cap")
    g.add_argument("--no-prefix-caching", action="store_true", help="disable the automatic prefix cache")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--no-native-q4", action="store_true",
                   help="always use dense weights (by default, CPU bf16 steps of <= 8 tokens read a Q4_0/Q4_1 "
                        "GGUF's 4-bit weights directly: faster at batch 1, slightly different bf16 numerics)")
    g.add_argument("--no-native-kernels", action="store_true",
                   help="run attention in PyTorch instead of plait's C kernel (which is compiled on first "
                        "use with the machine's C compiler; also PLAIT_NATIVE_KERNELS=0)")
    g.add_argument("--config", default=None,
                   help="JSON file of engine settings (e.g. the best point `plait bench sweep` wrote); flags given "
                        "on the command line win")


def engine_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(model=args.model, dtype=args.dtype, device=args.device, kv_cache_memory=args.kv_cache_memory,
                  block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                  enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads,
                  native_q4=not getattr(args, "no_native_q4", False),
                  native_kernels=not getattr(args, "no_native_kernels", False))
    if getattr(args, "config", None):
        kwargs = _merge_config_file(kwargs, args.config)
    return kwargs


def _merge_config_file(kwargs: dict, path: str) -> dict:
    """Settings from the file fill in whatever the command line left at its default."""
    import dataclasses
    import json

    try:
        with open(path) as f:
            settings = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--config {path}: cannot read a JSON object ({exc})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--config {path}: expected a JSON object of engine settings")
    settings = {k: v for k, v in settings.items() if not k.startswith("_")}  # "_sweep": provenance, not a setting
    defaults = {f.name: f.default for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"--config {path}: unknown engine settings {unknown}; known: {sorted(defaults)}")
    merged = dict(kwargs)
    for key, value in settings.items():
        if merged.get(key) == defaults[key]:
            merged[key] = value
    return merged


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=-1)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None, help="makes sampled output reproducible")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace):
    from plait.params import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=args.stop)


def cmd_generate(args: argparse.Namespace) -> int:
    from plait.engine.llm import LLM

    params = sampling_params(args)  # bad flags fail before the model loads
    llm = LLM(verbose=True, **engine_kwargs(args))
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=len(prompts) > 1)
    else:
        outs = llm.generate(prompts, params, use_tqdm=len(prompts) > 1)
    for prompt, out in zip(prompts, outs):
        if len(prompts) > 1:
            print(f"### {prompt}")
        for completion in out.outputs:
            print(completion.text if args.chat else prompt + completion.text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from plait.engine.chat_repl import run_chat

    params = sampling_params(args)
    return run_chat(engine_kwargs(args), params, args.system)


def cmd_pull(args: argparse.Namespace) -> int:
    from plait.loading.sources import pull_model

    try:
        print(pull_model(args.name))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from plait.server.app import serve
    except ImportError as exc:
        print(f"plait serve needs the server extras: pip install 'plait[server]' ({exc})", file=sys.stderr)
        return 2
    return serve(args, engine_kwargs(args))


def cmd_bench(args: argparse.Namespace) -> int:
    from plait.bench.cli import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plait", description="Batched and asynchronous LLM inference: generate, chat, serve, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="complete prompts (arguments, or one per line on stdin)")
    p.add_argument("prompt", nargs="*", help="prompt text; several prompts run as one batch")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template as a user turn")
    add_engine_args(p)
    add_sampling_args(p, max_tokens=128)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat in the terminal, streaming tokens as they come")
    p.add_argument("--system", default=None, help="system prompt")
    add_engine_args(p)
    add_sampling_args(p, max_tokens=512)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("pull", help="put a model in the local cache ($PLAIT_CACHE): smollm2-135m (default) "
                                    "or gemma3-270m")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require this Bearer token on /v1 (or set PLAIT_API_KEY)")
    p.add_argument("--max-waiting-requests", type=int, default=256,
                   help="pending requests beyond which new ones get HTTP 503")
    p.add_argument("--served-model-name", default=None, help="model name reported by /v1/models")
    p.add_argument("--request-timeout", type=float, default=None, help="seconds before a request is aborted")
    add_engine_args(p)
    p.set_defaults(func=cmd_serve)

    from plait.bench.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
