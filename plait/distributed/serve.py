"""`plait serve --data-parallel-size N` and `plait serve --pd-split`: the command-line flags and the router the
server runs on.

Light on purpose: the CLI imports this module to add its flags, so Ray is imported only when N > 1 or with
--pd-split.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data parallelism (needs the ray extra: pip install 'plait[ray]')")
    g.add_argument("--data-parallel-size", type=int, default=1,
                   help="engine replicas, one per Ray actor, behind one prefix-aware router (default 1: no Ray)")
    g.add_argument("--num-cpus-per-replica", type=int, default=1,
                   help="CPUs each replica reserves from Ray; also its torch thread count unless --threads")
    g.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (default: $RAY_ADDRESS, else start a local one)")
    g.add_argument("--pd-split", action="store_true",
                   help="prefill/decode split: one prefill and one decode engine, each a Ray actor with "
                        "--num-cpus-per-replica CPUs; the prompt KV moves between them (docs/distributed.md)")
    g.add_argument("--kv-connector", choices=("ray", "tcp"), default="ray",
                   help="with --pd-split: how the KV moves, through Ray's object store or a socket between the "
                        "two actors (default ray)")


def wants_router(args: argparse.Namespace) -> bool:
    size = getattr(args, "data_parallel_size", 1)
    if size < 1:
        raise ValueError(f"--data-parallel-size must be >= 1, got {size}")
    if getattr(args, "pd_split", False) and size > 1:
        raise ValueError("--pd-split runs one prefill and one decode engine; it cannot be combined with "
                         "--data-parallel-size > 1")
    return size > 1 or getattr(args, "pd_split", False)


def start_router(args: argparse.Namespace, engine_kwargs: dict) -> Any:
    from plait.distributed.ray_env import require_ray

    pd_split = getattr(args, "pd_split", False)
    try:
        require_ray("plait serve --pd-split" if pd_split else "plait serve --data-parallel-size")
    except ImportError as exc:  # a message and exit status 2, as for other bad flags, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if pd_split:
        from plait.distributed.pd.router import PDRouter

        return PDRouter(**engine_kwargs, connector=args.kv_connector, num_cpus_per_worker=args.num_cpus_per_replica,
                        ray_address=args.ray_address, max_waiting_requests=args.max_waiting_requests)
    from plait.distributed.router import RayRouter

    return RayRouter(**engine_kwargs, data_parallel_size=args.data_parallel_size,
                     num_cpus_per_replica=args.num_cpus_per_replica, ray_address=args.ray_address,
                     max_waiting_requests=args.max_waiting_requests)
