"""plait on Ray: data-parallel engine replicas for offline batches and serving (optional extra `plait[ray]`).

Importing this package never imports Ray; the features below ask for it when used and say how to install it.

- `DataParallelLLM` (also `LLM(..., data_parallel_size=N)`): one generate call over N replicas.
- `RayRouter` (`plait serve --data-parallel-size N`): the server's engine over N replicas, prefix-aware.
- `generate_dataset` / `PlaitProcessor`: Ray Data `map_batches` over plait engines, for datasets larger than
  memory.
- `PDRouter` (`plait serve --pd-split`): the prefill/decode split over two Ray actors; `PDClient` over two
  in-process engines; the KV moves through a connector (plait.distributed.kv_transfer).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DataParallelLLM": "plait.distributed.offline",
    "RayRouter": "plait.distributed.router",
    "PlaitProcessor": "plait.distributed.data",
    "generate_dataset": "plait.distributed.data",
    "split_by_prefix": "plait.distributed.placement",
    "PrefixRouter": "plait.distributed.placement",
    "require_ray": "plait.distributed.ray_env",
    "PDRouter": "plait.distributed.pd.router",
    "PDClient": "plait.distributed.pd.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'plait.distributed' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
