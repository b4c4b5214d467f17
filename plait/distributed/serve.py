"""`plait serve --data-parallel-size N`: the command-line flags and the router the server runs on.

Light on purpose: the CLI imports this module to add its flags, so Ray is imported only when N > 1.
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


def wants_router(args: argparse.Namespace) -> bool:
    size = getattr(args, "data_parallel_size", 1)
    if size < 1:
        raise ValueError(f"--data-parallel-size must be >= 1, got {size}")
    return size > 1


def start_router(args: argparse.Namespace, engine_kwargs: dict) -> Any:
    from plait.distributed.ray_env import require_ray
    from plait.distributed.router import RayRouter

    try:
        require_ray("plait serve --data-parallel-size")
    except ImportError as exc:  # a message and exit status 2, as for other bad flags, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return RayRouter(**engine_kwargs, data_parallel_size=args.data_parallel_size,
                     num_cpus_per_replica=args.num_cpus_per_replica, ray_address=args.ray_address,
                     max_waiting_requests=args.max_waiting_requests)
