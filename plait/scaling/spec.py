"""Building strategies from text ("asc:max=40,threshold=0.9") or a JSON object ({"strategy": "asc", ...}).

The same table serves `plait eval --strategy` and the server's `scaling` body field, so names and parameters are
spelled one way. Unknown names or parameters raise ValueError naming the field and what is allowed.

`reward=<name>` (best-of-N, particle filtering, step search) picks a reward from the caller's `rewards` table:
`logprob` (the default, the samples' own mean logprob) is always there; `plait eval` adds `oracle`, which reads
the task's answer key; the server adds nothing, so it refuses any other.
"""

from __future__ import annotations

from typing import Any, Mapping

from plait.scaling.best_of_n import BestOfN
from plait.scaling.blend import BlendASC
from plait.scaling.consistency import AdaptiveConsistency, EarlyStoppingConsistency, SelfConsistency
from plait.scaling.particle_filter import ParticleFilter
from plait.scaling.rpc import RPC
from plait.scaling.step_router import StepRouter
from plait.scaling.step_search import StepSearch

# name -> (class, {accepted key: constructor argument})
STRATEGIES: dict[str, tuple[type, dict[str, str]]] = {
    "sc": (SelfConsistency, {"n": "n"}),
    "bon": (BestOfN, {"n": "n", "reward": "reward"}),
    "asc": (AdaptiveConsistency, {"max": "max_samples", "max_samples": "max_samples", "threshold": "threshold",
                                  "batch": "batch", "min": "min_samples", "min_samples": "min_samples"}),
    "esc": (EarlyStoppingConsistency, {"w": "window", "window": "window", "max": "max_samples",
                                       "max_samples": "max_samples"}),
    "rpc": (RPC, {"n": "n", "pruning": "pruning"}),
    "pf": (ParticleFilter, {"n": "n", "temperature": "temperature", "max_steps": "max_steps",
                            "step_max_tokens": "step_max_tokens", "ess": "ess_threshold",
                            "ess_threshold": "ess_threshold", "reward": "reward"}),
    "blend": (BlendASC, {"avg": "budget_per_question", "budget_per_question": "budget_per_question",
                         "max": "max_per_question", "max_per_question": "max_per_question",
                         "round": "round_size", "round_size": "round_size", "stop": "stop_threshold",
                         "stop_threshold": "stop_threshold"}),
    "search": (StepSearch, {"k": "k", "width": "width", "solutions": "num_solutions",
                            "num_solutions": "num_solutions", "max_expansions": "max_expansions",
                            "expansions": "max_expansions", "tokens": "max_tokens_total",
                            "max_tokens_total": "max_tokens_total", "max_steps": "max_steps",
                            "step_max_tokens": "step_max_tokens", "reward": "reward"}),
}
# Strategies that need a second (small) engine: `plait eval --router-small` builds it; the server has one engine.
TWO_ENGINES: dict[str, tuple[type, dict[str, str]]] = {
    "route": (StepRouter, {"rule": "rule", "threshold": "threshold", "agree": "agree", "quantile": "quantile",
                           "step_max_tokens": "step_max_tokens", "max_steps": "max_steps"}),
}
ALIASES = {"self_consistency": "sc", "best_of_n": "bon", "adaptive_consistency": "asc",
           "early_stopping_consistency": "esc", "blend_asc": "blend", "blend-asc": "blend",
           "particle_filter": "pf", "step_search": "search", "astar": "search", "step_router": "route"}


def build_strategy(name: str, params: dict[str, Any], field: str = "strategy", two_engines: bool = False,
                   rewards: Mapping[str, Any] | None = None):
    """`field` names the caller's field in error messages (e.g. 'scaling.strategy' at the server).
    `two_engines` also accepts strategies that need a second engine (the caller supplies it later).
    `rewards`: the named rewards `reward=<name>` may pick, besides `logprob`."""
    table = {**STRATEGIES, **TWO_ENGINES} if two_engines else STRATEGIES
    if not isinstance(name, str):
        raise ValueError(f"{field} must be one of {sorted(table)}, got {name!r}")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in table:
        raise ValueError(f"{field} must be one of {sorted(table)}, got {name!r}")
    cls, accepted = table[key]
    kwargs = {}
    for k, v in params.items():
        if k not in accepted:
            raise ValueError(f"{field}: {key} takes the parameters {sorted(accepted)}, got {k!r}")
        kwargs[accepted[k]] = _reward(v, rewards, field) if k == "reward" else v
    return cls(**kwargs)


def _reward(name: Any, rewards: Mapping[str, Any] | None, field: str) -> Any:
    table = {"logprob": None, **(rewards or {})}
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{field}: reward must be one of {sorted(table)}, got {name!r}")
    return table[name]


def parse_strategy(text: str, two_engines: bool = False, rewards: Mapping[str, Any] | None = None):
    """'asc:max=40,threshold=0.9' -> AdaptiveConsistency(max_samples=40, threshold=0.9). Values are read as int,
    then float, then true/false."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"--strategy {text!r}: expected key=value, got {item!r}")
        params[k.strip()] = _value(v.strip())
    return build_strategy(name.strip(), params, field="--strategy", two_engines=two_engines, rewards=rewards)


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v
