"""`plait eval --strategy route:...`: give each step router its small engine and, when it has no threshold,
calibrate one on other questions of the same task (a different seed, so the evaluated questions stay unseen)."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from plait.params import SamplingParams
from plait.scaling.eval.tasks import load_task


def prepare_routers(routers: Sequence[Any], small: Any, large: Any, task_name: str, num_calibration: int,
                    seed: int, params: SamplingParams) -> str:
    """Bind `small` to every router and calibrate the uncalibrated ones; returns a line per router to print."""
    lines = []
    prompts = None
    for router in routers:
        router.small = small
        if router.threshold is None:
            if num_calibration < 1:
                raise ValueError(f"--router-calibration must be >= 1 for {router.describe()}, got "
                                 f"{num_calibration}")
            if prompts is None:
                prompts = [q.prompt for q in load_task(task_name, num_calibration, seed + 1).questions]
            asyncio.run(router.calibrate(large, prompts, params=params, seed=seed))
            lines.append(f"{router.describe()}: calibrated on {len(prompts)} questions (quantile "
                         f"{router.quantile})")
        else:
            lines.append(f"{router.describe()}: threshold given")
    return "\n".join(lines)
