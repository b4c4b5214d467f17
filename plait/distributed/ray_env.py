"""Finding Ray (an optional extra) and joining or starting a cluster.

Nothing here imports Ray at module import time: `import plait` and `import plait.distributed` stay fast and
work without the extra; only a feature that needs Ray calls `require_ray()`, which says how to install it.
"""

from __future__ import annotations

import os
from typing import Any

INSTALL_HINT = "pip install 'plait[ray]'"


def require_ray(feature: str = "this feature") -> Any:
    """The `ray` module, or ImportError naming the feature and the extra that provides it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{feature} runs on Ray, which is not installed: {INSTALL_HINT} ({exc})") from None
    return ray


def ensure_ray(address: str | None = None, feature: str = "this feature") -> Any:
    """Connect to the cluster at `address` (or $RAY_ADDRESS), or start a local one; reuse one already joined.

    A local cluster gets as many CPUs as this machine has: each engine replica asks Ray for its CPUs, so Ray's
    accounting, not ours, decides whether N replicas fit.
    """
    ray = require_ray(feature)
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        # log_to_driver off: every replica would echo its engine's log lines into the caller's terminal.
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    return ray
