"""`plait bench sweep`: the offline benchmark over a grid of engine settings; the best point becomes a config.

    plait bench sweep --param max_num_seqs=16,32,64 --param max_num_batched_tokens=256,512,2048 \\
        --workload fixed --num-prompts 64 --input-len 128 --output-len 128

Each point builds its own engine (`plait.LLM(**settings)`), runs `plait bench offline` on the same seeded
workload, and is freed before the next. The landscape is irregular (settings interact), so the whole grid is
measured rather than searched. The machine is noisy: with `--repeats N` every point takes the median of N passes,
and rerunning the best few points is wiser than trusting a small margin. The best point's settings are written
as a JSON file that `load_config` reads back (and `LLM(**load_config(path))` accepts).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from plait.config import EngineConfig

METRICS = ("output_tps", "total_tps")
# EngineConfig field -> attribute that plait.engine.args.add_engine_args stores it under (inverted flags noted apart).
_ARG_NAMES = {"num_threads": "threads"}
_INVERTED = {"enable_prefix_caching": "no_prefix_caching"}

EngineFactory = Callable[[dict[str, Any]], Any]


# ---------------------------------------------------------------------------------------- the grid


def engine_fields() -> dict[str, Any]:
    """EngineConfig's fields and their defaults: the settings a sweep (and a config file) may name."""
    return {f.name: f.default for f in dataclasses.fields(EngineConfig)}


def parse_value(text: str) -> Any:
    """'16' -> 16, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, anything else stays a string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null", "default"):
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def parse_param(spec: str) -> tuple[str, list[Any]]:
    """'max_num_seqs=16,32,64' (dashes allowed: 'max-num-seqs=...') -> ('max_num_seqs', [16, 32, 64])."""
    if "=" not in spec:
        raise ValueError(f"--param wants NAME=V1,V2,...; got {spec!r}")
    name, _, values = spec.partition("=")
    name = name.strip().replace("-", "_")
    fields = engine_fields()
    if name not in fields:
        raise ValueError(f"unknown engine setting {name!r} in --param; known: {', '.join(sorted(fields))}")
    parsed = [parse_value(v) for v in values.split(",") if v.strip()]
    if not parsed:
        raise ValueError(f"--param {name} has no values")
    if len(set(map(repr, parsed))) != len(parsed):
        raise ValueError(f"--param {name} repeats a value: {values}")
    return name, parsed


def parse_params(specs: Iterable[str]) -> dict[str, list[Any]]:
    """Several --param specs -> {name: values}, in the order given; a name may appear once."""
    params: dict[str, list[Any]] = {}
    for spec in specs:
        name, values = parse_param(spec)
        if name in params:
            raise ValueError(f"--param {name} given twice")
        params[name] = values
    if not params:
        raise ValueError("a sweep needs at least one --param NAME=V1,V2,...")
    return params


def make_grid(params: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product, the last parameter varying fastest: {a: [1, 2], b: [x, y]} -> a1b x, a1 y, a2 x, a2 y."""
    names = list(params)
    return [dict(zip(names, combo)) for combo in itertools.product(*(params[n] for n in names))]


# --------------------------------------------------------------------------------------- config files


def load_config(path: str | Path) -> dict[str, Any]:
    """Read an engine config JSON (as the sweep writes it): EngineConfig keyword arguments, validated.

    Keys starting with '_' are notes (provenance) and are dropped; an unknown key is an error, as is a set of
    values EngineConfig rejects. The result can be passed as `LLM(**load_config(path))`.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds one JSON object of engine settings")
    settings = {k: v for k, v in data.items() if not k.startswith("_")}
    unknown = sorted(set(settings) - set(engine_fields()))
    if unknown:
        raise ValueError(f"{path}: unknown engine settings {unknown}; known: {', '.join(sorted(engine_fields()))}")
    EngineConfig(**settings)  # raises ValueError with a clear message if the values do not fit together
    return settings


def write_config(path: str | Path, settings: dict[str, Any], note: dict[str, Any] | None = None) -> Path:
    """Write engine settings (plus a '_sweep' note of where they came from) as a config file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(settings)
    if note:
        payload["_sweep"] = note
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


# ------------------------------------------------------------------------------------------ running


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `sweep` under `plait bench`'s sub-parsers: --param plus the offline workload and engine flags."""
    from plait.bench.offline import add_offline_args
    from plait.engine.args import add_engine_args

    p = subparsers.add_parser("sweep", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="offline throughput over a grid of engine settings; writes the best as a config",
                              description=__doc__.split("\n\n")[0])
    s = p.add_argument_group("sweep")
    s.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="an EngineConfig setting and its values (repeatable; the grid is their product), "
                        "e.g. max_num_seqs=16,32,64")
    s.add_argument("--metric", choices=METRICS, default="output_tps", help="what 'best' maximises")
    s.add_argument("--config-out", default=None,
                   help="where to write the best settings (default: next to --output, *.config.json)")
    add_offline_args(p)
    add_engine_args(p)
    p.set_defaults(func=run_sweep)
    return p


def _engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    from plait.engine.args import engine_kwargs

    return engine_kwargs(args)


def _apply_settings(args: argparse.Namespace, settings: dict[str, Any]) -> argparse.Namespace:
    """A copy of `args` whose engine flags say `settings`, so each point's JSON records what it ran."""
    point = copy.copy(args)
    for name, value in settings.items():
        if name in _INVERTED:
            setattr(point, _INVERTED[name], not value)
        else:
            setattr(point, _ARG_NAMES.get(name, name), value)
    return point


def default_engine_factory(args: argparse.Namespace) -> EngineFactory:
    """settings -> plait.LLM built from the command line's engine flags overridden by `settings`."""
    base = _engine_settings(args)

    def build(settings: dict[str, Any]) -> Any:
        from plait.engine.llm import LLM

        return LLM(**{**base, **settings})

    return build


def _release(llm: Any) -> None:
    if hasattr(llm, "shutdown"):
        llm.shutdown()
    gc.collect()


def run_point(args: argparse.Namespace, settings: dict[str, Any], factory: EngineFactory,
              output: Path) -> dict[str, Any]:
    """Build one engine, run the offline benchmark on it, free it; a failure is recorded, not raised."""
    from plait.bench.offline import run_offline

    point: dict[str, Any] = {"settings": settings}
    llm = None
    try:
        llm = factory(dict(settings))
        point_args = _apply_settings(args, settings)
        point_args.output = str(output)
        point_args.baseline = "none"
        result = run_offline(point_args, llm=llm)
        median = result["plait"]["median"]
        point.update({k: median[k] for k in ("wall_s",) + METRICS}, result_file=str(output),
                     effective={"max_num_seqs": result["config"].get("max_num_seqs"),
                                "max_num_batched_tokens": result["config"].get("max_num_batched_tokens")})
        point["_result"] = result
    except (ValueError, RuntimeError, MemoryError) as exc:
        point["error"] = f"{type(exc).__name__}: {exc}"
        print(f"point {settings} failed: {point['error']}", file=sys.stderr)
    finally:
        if llm is not None:
            _release(llm)
        del llm
        gc.collect()
    return point


def best_point(points: list[dict[str, Any]], metric: str = "output_tps") -> dict[str, Any] | None:
    """The successful point with the highest `metric` (ties: the earlier point)."""
    ok = [p for p in points if p.get(metric) is not None and p[metric] == p[metric]]
    return max(ok, key=lambda p: p[metric]) if ok else None


def format_sweep(summary: dict[str, Any]) -> str:
    from plait.bench import report

    names = list(summary["params"])
    metric = summary["metric"]
    best = summary.get("best") or {}
    rows = []
    for p in summary["points"]:
        mark = "*" if best and p["settings"] == best.get("settings") else ""
        values = [str(p["settings"][n]) for n in names]
        values[0] = mark + values[0] if mark else values[0]
        if "error" in p:
            rows.append(values + ["failed", "", "", ""])
        else:
            rel = p[metric] / best[metric] if best else float("nan")
            rows.append(values + [p["output_tps"], p["total_tps"], p["wall_s"], f"{rel:.2f}"])
    lines = [f"\nplait bench sweep: {summary.get('workload_description', '')}",
             f"{len(summary['points'])} points, best by {metric} (* = best; 'vs best' is {metric} / best)\n",
             report.table(names + ["output tok/s", "total tok/s", "wall s", "vs best"], rows)]
    if best:
        lines.append(f"\nbest: {best['settings']} -> {metric} {report.fmt(best[metric])}")
    return "\n".join(lines)


def run_sweep(args: argparse.Namespace, engine_factory: EngineFactory | None = None) -> int:
    """Run the grid, print the table, save the sweep JSON and the best point's config; 1 if every point failed."""
    from plait.bench import report

    params = parse_params(args.param)
    grid = make_grid(params)
    if getattr(args, "baseline", "none") != "none":
        print("note: a sweep measures plait only; --baseline is ignored", file=sys.stderr)
    factory = engine_factory or default_engine_factory(args)
    output = Path(args.output or report.default_output("sweep"))
    points_dir = output.with_name(output.stem + "-points")  # a sub-folder: `plait bench report` reads top-level only
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    points = []
    for i, settings in enumerate(grid):
        print(f"\n[{i + 1}/{len(grid)}] {settings}", file=sys.stderr)
        points.append(run_point(args, settings, factory, points_dir / f"point-{i:03d}.json"))

    results = [p.pop("_result") for p in points if "_result" in p]
    best = best_point(points, args.metric)
    base = _engine_settings(args)
    summary: dict[str, Any] = {
        "benchmark": "sweep", "timestamp": started, "command": sys.argv, "metric": args.metric,
        "params": params, "base_engine": base,
        "workload_description": results[0]["config"]["workload_description"] if results else None,
        "workload": {k: getattr(args, k, None) for k in ("workload", "num_prompts", "input_len", "min_input_len",
                                                            "max_input_len", "output_len", "seed", "repeats")},
        "machine": results[0]["machine"] if results else None,
        "points": points, "best": best,
    }
    if best:
        defaults = engine_fields()
        # tune_malloc is how plait's own commands run their process, not a setting the sweep chose.
        chosen = {k: v for k, v in base.items()
                  if k in defaults and v != defaults[k] and v is not None and k != "tune_malloc"}
        chosen.update(best["settings"])
        config_path = Path(args.config_out or output.with_name(output.stem + ".config.json"))
        write_config(config_path, chosen, {"metric": args.metric, "value": best[args.metric],
                                           "sweep": str(output), "timestamp": started,
                                           "workload": summary["workload_description"]})
        summary["config_file"] = str(config_path)
    print(format_sweep(summary))
    path = report.save_json(output, summary)
    print(f"sweep saved to {path}")
    if best:
        print(f"best settings written to {summary['config_file']}")
    return 0 if best else 1
