"""Running strategies on a task: live on an engine, or replayed on samples drawn once and stored.

Sample efficiency is measured as the papers do: `draw_samples` draws N samples per question once (plus a greedy
answer), `save_samples` stores them, and `replay` runs every strategy on the same stored draws. Each strategy's
row reports accuracy with a bootstrap 95% interval, samples and generated tokens per question, and wall time.
Two baselines stand beside the strategies so a reader sees whether sampling helps at all: greedy, and one sample
(the mean accuracy of single samples, i.e. the expected accuracy of one draw).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from plait.params import SamplingParams
from plait.scaling.answers import get_extractor
from plait.scaling.base import Strategy
from plait.scaling.blend import BlendASC
from plait.scaling.draws import LiveSampler, ReplaySampler
from plait.scaling.eval.stats import bootstrap_interval
from plait.scaling.eval.tasks import Task
from plait.scaling.result import Sample, ScalingResult


@dataclass
class Row:
    strategy: str
    accuracy: float
    ci_low: float
    ci_high: float
    samples_per_question: float
    tokens_per_question: float
    wall_s: float
    num_questions: int
    max_samples_used: int = 0
    budget: int | None = None
    correct: list[bool] = field(default_factory=list)
    per_model: dict = field(default_factory=dict)  # step routing: mean steps and tokens per question, per model
    details: dict = field(default_factory=dict)  # step-wise strategies: mean per question of numeric details


def _row(name: str, task: Task, results: Sequence[ScalingResult], wall_s: float, budget: int | None) -> Row:
    correct = [task.is_correct(r.answer, q) for r, q in zip(results, task.questions)]
    n = max(1, len(results))
    low, high = bootstrap_interval(correct)
    return Row(name, sum(correct) / n, low, high, sum(r.samples_used for r in results) / n,
               sum(r.generated_tokens for r in results) / n, wall_s, len(results),
               max((r.samples_launched for r in results), default=0), budget, correct, _per_model(results),
               _mean_details(results))


def _mean_details(results: Sequence[ScalingResult]) -> dict:
    """Numeric details (particle filtering: resamples, steps; search: expansions) averaged over questions, so a
    table says how much the mechanism did (a particle filter that never resampled was independent sampling)."""
    keys = {k for r in results for k, v in r.details.items() if isinstance(v, (int, float))
            and not isinstance(v, bool)}
    return {k: sum(r.details.get(k, 0) for r in results) / len(results) for k in sorted(keys)} if results else {}


def _per_model(results: Sequence[ScalingResult]) -> dict:
    """Mean steps and kept tokens per question for each model, when the strategy reports them (step routing)."""
    out: dict = {}
    for key in ("steps", "tokens"):
        for r in results:
            counts = r.details.get(key)
            if not isinstance(counts, dict):
                continue
            for model, value in counts.items():
                out.setdefault(key, {}).setdefault(model, 0.0)
                out[key][model] += value / len(results)
    return out


def task_params(task: Task, temperature: float | None = None, max_tokens: int | None = None) -> SamplingParams:
    return SamplingParams(temperature=task.temperature if temperature is None else temperature,
                          max_tokens=max_tokens or task.max_tokens, stop=list(task.stop), logprobs=0)


async def draw_samples(engine: Any, task: Task, n: int, params: SamplingParams, seed: int = 0,
                       concurrency: int = 8) -> dict:
    """n samples and one greedy answer per question, `concurrency` questions at a time -> a JSON-able dict."""
    extract = get_extractor(task.extract)
    sampler = LiveSampler(engine, params, extract, seed)
    greedy_params = SamplingParams(temperature=0, max_tokens=params.max_tokens, stop=params.stop, logprobs=0)
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(q, draws):
        async with gate:
            greedy = None
            async for out in engine.generate(q.prompt, greedy_params, output_kind="final"):
                greedy = out.outputs[0]
            samples = [s async for s in draws.stream(n)]
            return {"prompt": q.prompt, "reference": q.reference, "prompt_tokens": draws.prompt_tokens,
                    "greedy": {"text": greedy.text, "answer": extract(greedy.text), "num_tokens": len(greedy.token_ids)},
                    "samples": [s.to_dict() for s in samples]}

    opened = [sampler.open(q.prompt) for q in task.questions]  # in question order: seeds don't depend on timing
    questions = await asyncio.gather(*(one(q, d) for q, d in zip(task.questions, opened)))
    return {"task": task.name, "num_samples": n, "seed": seed, "wall_s": time.perf_counter() - started,
            "params": {"temperature": params.temperature, "max_tokens": params.max_tokens, "stop": params.stop},
            "questions": questions}


def save_samples(stored: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(stored, f)


def load_samples(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def baselines(task: Task, stored: dict) -> list[Row]:
    """Greedy accuracy, and the expected accuracy of one sample (mean over each question's samples)."""
    qs = stored["questions"]
    greedy = [task.is_correct(q["greedy"]["answer"], tq) for q, tq in zip(qs, task.questions)]
    per_q = [sum(task.is_correct(s["answer"], tq) for s in q["samples"]) / max(1, len(q["samples"]))
             for q, tq in zip(qs, task.questions)]
    rows = []
    for name, values, samples, tokens in (
            ("greedy", [float(g) for g in greedy], 1.0, sum(q["greedy"]["num_tokens"] for q in qs) / len(qs)),
            ("one sample", per_q, 1.0,
             sum(sum(s["num_tokens"] for s in q["samples"]) / max(1, len(q["samples"])) for q in qs) / len(qs))):
        low, high = bootstrap_interval([v >= 0.5 for v in values]) if name == "greedy" else _interval_of_means(values)
        rows.append(Row(name, sum(values) / len(values), low, high, samples, tokens, 0.0, len(qs), 1, 1,
                        [bool(v >= 0.5) for v in values]))
    return rows


def _interval_of_means(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    import random

    rng = random.Random(0)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples)]


def replay(task: Task, stored: dict, strategies: Sequence[Strategy]) -> list[Row]:
    """Every strategy on the stored draws. A strategy whose budget exceeds the stored samples is refused."""
    qs = stored["questions"]
    have = min(len(q["samples"]) for q in qs)
    rows = []
    for strategy in strategies:
        if strategy.name in ("pf", "search"):
            raise ValueError(f"--strategy {strategy.name} samples step by step: run it live, not with --replay")
        if strategy.budget > have and not isinstance(strategy, BlendASC):
            raise ValueError(f"--strategy {strategy.describe()}: needs up to {strategy.budget} samples per "
                             f"question, the replay file has {have}")
        sampler = ReplaySampler({q["prompt"]: [Sample.from_dict(s) for s in q["samples"]] for q in qs},
                                {q["prompt"]: q.get("prompt_tokens", 0) for q in qs})
        started = time.perf_counter()
        results = asyncio.run(_solve_all(strategy, [sampler.open(q["prompt"]) for q in qs], None))
        rows.append(_row(strategy.describe(), task, results, time.perf_counter() - started,
                         _total_budget(strategy, len(qs))))
    return rows


async def _solve_all(strategy: Strategy, draws: list, concurrency: int | None) -> list[ScalingResult]:
    if isinstance(strategy, BlendASC):
        return await strategy.run_many(draws, None)
    gate = asyncio.Semaphore(concurrency or len(draws) or 1)

    async def one(d):
        async with gate:
            return await strategy.run(d)
    return list(await asyncio.gather(*(one(d) for d in draws)))


def _total_budget(strategy: Strategy, num_questions: int) -> int:
    if isinstance(strategy, BlendASC):
        return int(round(strategy.budget_per_question * num_questions))
    return strategy.budget


def live(engine: Any, task: Task, strategies: Sequence[Strategy], params: SamplingParams, seed: int = 0,
         concurrency: int = 8) -> list[Row]:
    """Every strategy live on the engine, `concurrency` questions at a time (Blend-ASC: all questions at once)."""
    rows = []
    for strategy in strategies:
        sampler = LiveSampler(engine, params, task.extract, seed)
        started = time.perf_counter()
        results = asyncio.run(_solve_all(strategy, [sampler.open(q.prompt) for q in task.questions], concurrency))
        rows.append(_row(strategy.describe(), task, results, time.perf_counter() - started,
                         _total_budget(strategy, len(task.questions))))
    return rows


def format_table(task_name: str, rows: Sequence[Row]) -> str:
    lines = [f"task {task_name}, {rows[0].num_questions if rows else 0} questions",
             f"{'strategy':<28} {'accuracy':>8} {'95% CI':>15} {'samples/q':>10} {'tokens/q':>9} {'wall s':>8}"]
    for r in rows:
        lines.append(f"{r.strategy:<28} {r.accuracy:>8.3f} {f'[{r.ci_low:.3f}, {r.ci_high:.3f}]':>15} "
                     f"{r.samples_per_question:>10.2f} {r.tokens_per_question:>9.1f} {r.wall_s:>8.2f}")
        if r.per_model:
            lines.append("    per question: " + ", ".join(
                f"{model} {r.per_model['steps'].get(model, 0):.1f} steps / {r.per_model['tokens'].get(model, 0):.1f} "
                f"tokens" for model in r.per_model.get("tokens", {})))
        if r.details:
            lines.append("    mean per question: " + ", ".join(f"{k} {v:.2f}" for k, v in r.details.items()))
    return "\n".join(lines)


def rows_to_json(task_name: str, rows: Sequence[Row], extra: dict | None = None) -> dict:
    return {"task": task_name, **(extra or {}), "rows": [asdict(r) for r in rows]}
