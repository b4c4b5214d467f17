"""Particle filtering over reasoning steps ("A Probabilistic Inference Approach to Inference-Time Scaling").

N particles each write one step at a time (generation stops at `step_delimiter`, default a blank line). After each
step every particle gets a reward; when the rewards are uneven (effective sample size below `ess_threshold` x N)
the particles are resampled with replacement by softmax(reward / temperature), so promising partial solutions are
duplicated and weak ones dropped. Duplicates continue from the same token ids, so the engine's prefix cache shares
their KV. It stops when every particle has finished (EOS or its token cap) or after `max_steps`; the answer is the
particle with the best final reward.

Resampling only on uneven weights is deliberate: with a constant reward nothing is ever resampled, and particle
filtering is exactly N independent samples (a test checks it); with the paper's always-resample rule it would be
N correlated ones.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from plait.params import SamplingParams
from plait.scaling.answers import get_extractor
from plait.scaling.base import Strategy, check_float, check_int, solve_live
from plait.scaling.draws import DEFAULT_PARAMS, derive_seed
from plait.scaling.result import Sample, ScalingResult
from plait.scaling.rewards import Reward
from plait.scaling.voting import Tally


@dataclass
class _Particle:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    finish_reason: str | None = None
    reward: float = 0.0
    logprob_sum: float = 0.0
    lineage: list[int] = field(default_factory=list)  # the particle index it descends from, after each step


class ParticleFilter(Strategy):
    name = "pf"

    def __init__(self, n: int = 8, step_delimiter: str = "\n\n", reward: Reward | None = None,
                 temperature: float = 1.0, max_steps: int = 40, step_max_tokens: int = 128,
                 ess_threshold: float = 0.5) -> None:
        self.n = self.budget = check_int("n", n, 1)
        if not isinstance(step_delimiter, str) or not step_delimiter:
            raise ValueError(f"step_delimiter must be a non-empty string, got {step_delimiter!r}")
        self.step_delimiter, self.reward = step_delimiter, reward
        self.temperature = check_float("temperature", temperature, 0.0, 1e6, open_low=True)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.step_max_tokens = check_int("step_max_tokens", step_max_tokens, 1)
        self.ess_threshold = check_float("ess_threshold", ess_threshold, 0.0, 1.0)
        self.resamples = 0  # how many steps resampled, in the last solve (for tests and reports)

    async def run(self, draws: Any) -> ScalingResult:
        return await solve_live(self, draws)

    async def solve(self, engine: Any, prompt: Any, *, params: SamplingParams | None = None,
                    extract: Any = "last_number", seed: int = 0) -> ScalingResult:
        started = time.perf_counter()
        extract_fn = get_extractor(extract)
        base = params or DEFAULT_PARAMS
        total_cap = base.max_tokens or self.step_max_tokens * self.max_steps
        step_params = replace(base, n=1, stop=list(base.stop_strings) + [self.step_delimiter],
                              include_stop_str_in_output=True, logprobs=0)
        _, prompt_ids = engine.encode(prompt)
        rng = random.Random(derive_seed(seed, "resample"))
        particles = [_Particle(lineage=[i]) for i in range(self.n)]
        cost = {"prompt": 0, "generated": 0}
        self.resamples = 0

        async def grow(i: int, p: _Particle, step: int) -> None:
            room = total_cap - len(p.token_ids)
            sp = replace(step_params, max_tokens=min(self.step_max_tokens, room), seed=derive_seed(seed, step, i))
            final = None
            async for out in engine.generate(prompt_ids + p.token_ids, sp, output_kind="final"):
                final = out
            c = final.outputs[0]
            cost["prompt"] += len(final.prompt_token_ids)
            cost["generated"] += len(c.token_ids)
            p.token_ids = p.token_ids + list(c.token_ids)
            p.text += c.text
            p.logprob_sum += c.cumulative_logprob or 0.0
            ended_step = isinstance(c.stop_reason, str) and c.stop_reason == self.step_delimiter
            if not ended_step or len(p.token_ids) >= total_cap:
                p.done, p.finish_reason = True, c.finish_reason
            p.reward = await self._reward(prompt, p)

        steps_run = 0
        for step in range(self.max_steps):
            active = [(i, p) for i, p in enumerate(particles) if not p.done]
            if not active:
                break
            steps_run += 1
            await asyncio.gather(*(grow(i, p, step) for i, p in active))
            if step + 1 < self.max_steps and not all(p.done for p in particles):
                particles = self._resample(particles, rng)
        best = max(range(len(particles)), key=lambda i: (particles[i].reward, -i))
        samples = [Sample(index=i, text=p.text, answer=extract_fn(p.text), num_tokens=len(p.token_ids),
                          mean_logprob=p.logprob_sum / len(p.token_ids) if p.token_ids else None,
                          finish_reason=p.finish_reason or "length", score=p.reward)
                   for i, p in enumerate(particles)]
        tally = Tally()
        for s in samples:
            tally.add(s.answer)
        return ScalingResult(strategy=self.describe(), answer=samples[best].answer, text=samples[best].text,
                             samples=samples, samples_used=self.n, samples_launched=self.n,
                             prompt_tokens=cost["prompt"], generated_tokens=cost["generated"],
                             wall_s=time.perf_counter() - started, votes=dict(tally.weights),
                             details={"resamples": self.resamples, "steps": steps_run})

    async def _reward(self, question: Any, p: _Particle) -> float:
        if self.reward is not None:
            return float(await self.reward(question, p.text))
        return p.logprob_sum / len(p.token_ids) if p.token_ids else 0.0  # self-certainty from sampling's logprobs

    def _resample(self, particles: list[_Particle], rng: random.Random) -> list[_Particle]:
        weights = softmax([p.reward / self.temperature for p in particles])
        ess = 1.0 / sum(w * w for w in weights)
        if ess >= self.ess_threshold * len(particles) - 1e-9:
            return particles  # weights even enough (always so for a constant reward): keep every particle
        self.resamples += 1
        chosen = rng.choices(range(len(particles)), weights=weights, k=len(particles))
        return [replace(particles[j], lineage=particles[j].lineage + [j]) for j in chosen]

    def describe(self) -> str:
        reward = getattr(self.reward, "__name__", "reward") if self.reward else "logprob"
        temperature = "" if self.temperature == 1.0 else f",temperature={self.temperature:g}"
        return f"pf:n={self.n},reward={reward}{temperature}"


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    es = [math.exp(x - m) for x in xs]
    total = sum(es)
    return [e / total for e in es]
