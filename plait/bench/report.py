"""Small helpers shared by the benchmarks: medians, plain-text tables, machine info and JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Throughput:
    """One timed pass over a workload. Rates are derived, so the JSON and the table can never disagree."""

    wall_s: float
    prompt_tokens: int
    output_tokens: int
    num_requests: int
    prefill_tokens: int | None = None  # tokens the engine actually ran through prefill (recompute included)

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def total_tps(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.wall_s if self.wall_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), output_tps=self.output_tps, total_tps=self.total_tps,
                    requests_per_s=self.requests_per_s)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-pair ratios a_i / b_i: pairs ran back to back, so each ratio saw the same machine noise."""
    return [a / b if b else float("nan") for a, b in zip(numerators, denominators)]


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned first column and right-aligned numbers, separated by two spaces."""
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info(dtype: str | None = None) -> dict[str, Any]:
    """What a reader needs to judge a number from another machine: CPU, threads, versions, dtype."""
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(), "dtype": dtype,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def default_output(kind: str) -> Path:
    return Path("results") / f"bench-{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def save_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
