"""plait's command line: generate, chat, pull, serve, bench."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from plait.engine.args import add_engine_args, engine_kwargs


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
    p.add_argument("--enable-priority", action="store_true",
                   help="honour the request field `priority` (lower runs first and may preempt others); off by "
                        "default, so no client can jump the queue, and then a non-zero priority gets HTTP 400")
    add_engine_args(p)
    from plait.distributed.serve import add_serve_args

    add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    from plait.bench.cli import add_bench_parser

    add_bench_parser(sub)
    from plait.scaling.eval.cli import add_eval_parser

    add_eval_parser(sub)
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
