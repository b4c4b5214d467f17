"""Step routing between two engines: a small model writes each step, a test decides whether a large one rewrites it.

Two tests, one per paper, both "route when a statistic of the step exceeds a threshold":
- `rule="entropy"` (GlimpRouter): the small model first writes only the step's first token (a glimpse) with its
  top-20 logprobs; when the entropy of that distribution exceeds the threshold the large model writes the whole
  step, otherwise the small model writes it (from the same prefix, which the prefix cache already holds; the
  one glimpse token is discarded so that no delimiter or multi-byte character is split between two requests).
- `rule="perplexity"` (ATTS): the small model writes the step; the large model scores it (`engine.score`, a
  prefill-only call) and, when its perplexity exp(-mean logprob) exceeds the threshold, the step is discarded and
  the large model rewrites it.
The threshold is given, or set by `calibrate(prompts)` to a quantile of the statistic over small-model steps on
calibration prompts (ATTS rejects above the 0.6 quantile: `quantile=0.6` routes about 40% of steps).

`agree` turns on TrimR-style early stopping: after each step the answer is extracted from the solution so far, and
when `agree` consecutive steps give the same answer the solution stops there (the thinking has converged).

Steps are appended as token ids, so whichever model writes the next step reads the same prefix. Any two engines
with the same tokenizer work (the constructor checks the vocabulary sizes). The result's `details` counts steps
and tokens per model (including the small model's discarded steps and glimpses, and the large model's scored
tokens), and lists which model wrote each step and its statistic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from plait.params import SamplingParams
from plait.scaling.answers import get_extractor
from plait.scaling.base import Strategy, check_float, check_int, solve_live
from plait.scaling.draws import DEFAULT_PARAMS, derive_seed
from plait.scaling.result import Sample, ScalingResult
from plait.scaling.steps import Step, entropy, step_params, write_steps

RULES = ("entropy", "perplexity")
GLIMPSE_LOGPROBS = 20  # alternatives whose distribution stands in for the first token's full distribution


@dataclass
class _Counts:
    steps: dict[str, int] = field(default_factory=lambda: {"small": 0, "large": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"small": 0, "large": 0})  # kept in the solution
    discarded_small: int = 0  # small-model tokens written and then replaced (rejected steps, routed glimpses)
    scored_large: int = 0  # step tokens the large model scored (perplexity rule: prefill, not generation)
    prompt_tokens: int = 0
    trace: list[dict] = field(default_factory=list)


class StepRouter(Strategy):
    name = "route"

    def __init__(self, small: Any = None, rule: str = "entropy", threshold: float | None = None,
                 step_delimiter: str = "\n\n", step_max_tokens: int = 128, max_steps: int = 40,
                 agree: int | None = None, quantile: float = 0.6) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
        if not isinstance(step_delimiter, str) or not step_delimiter:
            raise ValueError(f"step_delimiter must be a non-empty string, got {step_delimiter!r}")
        self.small, self.rule, self.step_delimiter = small, rule, step_delimiter
        self.threshold = None if threshold is None else check_float("threshold", threshold, -math.inf, math.inf)
        self.step_max_tokens = check_int("step_max_tokens", step_max_tokens, 1)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.agree = None if agree is None else check_int("agree", agree, 2)
        self.quantile = check_float("quantile", quantile, 0.0, 1.0)  # calibrate's default
        self.budget = 1  # one solution

    async def run(self, draws: Any) -> ScalingResult:
        return await solve_live(self, draws)

    def _check_engines(self, large: Any) -> None:
        if self.small is None:
            raise ValueError("StepRouter needs a small engine (StepRouter(small=...), or plait eval --router-small)")
        if self.small.vocab_size != large.vocab_size:
            raise ValueError(f"the small and large engines need the same tokenizer, got vocabularies of "
                             f"{self.small.vocab_size} and {large.vocab_size}")

    async def solve(self, engine: Any, prompt: Any, *, params: SamplingParams | None = None,
                    extract: Any = "last_number", seed: int = 0) -> ScalingResult:
        """Answer `prompt` with the small engine writing and `engine` (the large one) rewriting routed steps."""
        self._check_engines(engine)
        if self.threshold is None:
            raise ValueError("threshold is not set: pass threshold=... or call calibrate(...) first")
        started = time.perf_counter()
        extract_fn = get_extractor(extract)
        base = params or DEFAULT_PARAMS
        cap = base.max_tokens or self.step_max_tokens * self.max_steps
        sp = step_params(base, self.step_delimiter)
        _, prompt_ids = engine.encode(prompt)
        ids: list[int] = []
        text, logprob_sum, finish = "", 0.0, None
        counts = _Counts()
        answers: list[str | None] = []
        trimmed = False
        for number in range(self.max_steps):
            room = min(self.step_max_tokens, cap - len(ids))
            if room < 1:
                finish = "length"
                break
            step, model, stat = await self._one_step(engine, prompt_ids, ids, sp, room,
                                                     derive_seed(seed, "step", number), counts)
            ids += step.token_ids
            text += step.text
            logprob_sum += step.logprob_sum
            counts.steps[model] += 1
            counts.tokens[model] += len(step.token_ids)
            counts.trace.append({"model": model, "tokens": len(step.token_ids), "stat": stat})
            answers.append(extract_fn(text))
            if step.final:
                finish = step.finish_reason
                break
            if self.agree and len(answers) >= self.agree and answers[-1] is not None \
                    and len(set(answers[-self.agree:])) == 1:
                trimmed, finish = True, "stop"
                break
        sample = Sample(index=0, text=text, answer=extract_fn(text), num_tokens=len(ids),
                        mean_logprob=logprob_sum / len(ids) if ids else None, finish_reason=finish or "length")
        generated = counts.tokens["small"] + counts.tokens["large"] + counts.discarded_small
        details = {"rule": self.rule, "threshold": self.threshold, "steps": dict(counts.steps),
                   "tokens": dict(counts.tokens), "discarded_small_tokens": counts.discarded_small,
                   "scored_large_tokens": counts.scored_large, "trimmed": trimmed, "trace": counts.trace,
                   "token_ids": ids}
        return ScalingResult(strategy=self.describe(), answer=sample.answer, text=text, samples=[sample],
                             samples_used=1, samples_launched=1, prompt_tokens=counts.prompt_tokens,
                             generated_tokens=generated, wall_s=time.perf_counter() - started,
                             votes={sample.answer: 1.0} if sample.answer is not None else {},
                             stopped_early=trimmed, details=details)

    async def _one_step(self, large: Any, prompt_ids: list[int], ids: list[int], sp: SamplingParams, room: int,
                        seed: int, counts: _Counts) -> tuple[Step, str, float]:
        """The next step, which model kept it, and the statistic that decided."""
        counts.prompt_tokens += len(prompt_ids) + len(ids)
        if self.rule == "entropy":
            glimpse = (await write_steps(self.small, prompt_ids, ids, sp, 1, 1, derive_seed(seed, "glimpse"),
                                         self.step_delimiter, top_logprobs=GLIMPSE_LOGPROBS))[0]
            stat = entropy(glimpse.first_token_logprobs or [])
            if stat > self.threshold:
                counts.discarded_small += len(glimpse.token_ids)
                return await self._large_step(large, prompt_ids, ids, sp, room, seed, counts), "large", stat
            if not glimpse.ended_step and not glimpse.final and room > 1:
                # The small model writes the step from the same prefix (so the same first-token distribution)
                # rather than after the glimpse: continuing would split a delimiter or a multi-byte character
                # between two requests, whose stop checks and detokenizers each see only their half.
                counts.discarded_small += len(glimpse.token_ids)
                counts.prompt_tokens += len(prompt_ids) + len(ids)
                glimpse = (await write_steps(self.small, prompt_ids, ids, sp, 1, room, derive_seed(seed, "small"),
                                             self.step_delimiter))[0]
            return glimpse, "small", stat
        step = (await write_steps(self.small, prompt_ids, ids, sp, 1, room, derive_seed(seed, "small"),
                                  self.step_delimiter))[0]
        stat = await self._perplexity(large, prompt_ids, ids, step, counts)
        if stat > self.threshold:
            counts.discarded_small += len(step.token_ids)
            return await self._large_step(large, prompt_ids, ids, sp, room, seed, counts), "large", stat
        return step, "small", stat

    async def _large_step(self, large: Any, prompt_ids: list[int], ids: list[int], sp: SamplingParams, room: int,
                          seed: int, counts: _Counts) -> Step:
        counts.prompt_tokens += len(prompt_ids) + len(ids)
        return (await write_steps(large, prompt_ids, ids, sp, 1, room, derive_seed(seed, "large"),
                                  self.step_delimiter))[0]

    @staticmethod
    async def _perplexity(large: Any, prompt_ids: list[int], ids: list[int], step: Step, counts: _Counts) -> float:
        if not step.token_ids:
            return 0.0  # nothing to judge (an immediate EOS): keep it
        from plait.scaling.scoring import score_continuation

        scored = await score_continuation(large, prompt_ids + ids, step.token_ids)
        counts.scored_large += len(step.token_ids)
        return math.exp(-sum(scored.token_logprobs) / len(scored.token_logprobs))

    async def statistics(self, large: Any, prompts: Sequence[Any], params: SamplingParams | None = None,
                         steps_per_prompt: int = 4, seed: int = 0) -> list[float]:
        """The routing statistic of up to `steps_per_prompt` small-model steps per prompt (steps all kept)."""
        self._check_engines(large)
        base = params or DEFAULT_PARAMS
        sp = step_params(base, self.step_delimiter)
        values: list[float] = []
        for p_index, prompt in enumerate(prompts):
            _, prompt_ids = large.encode(prompt)
            ids: list[int] = []
            for number in range(steps_per_prompt):
                room = min(self.step_max_tokens, (base.max_tokens or self.step_max_tokens) - len(ids))
                if room < 1:
                    break
                step = (await write_steps(self.small, prompt_ids, ids, sp, 1, room,
                                          derive_seed(seed, "calibrate", p_index, number), self.step_delimiter,
                                          top_logprobs=GLIMPSE_LOGPROBS if self.rule == "entropy" else 0))[0]
                if self.rule == "entropy":
                    values.append(entropy(step.first_token_logprobs or []))
                else:
                    values.append(await self._perplexity(large, prompt_ids, ids, step, _Counts()))
                ids += step.token_ids
                if step.final:
                    break
        return values

    async def calibrate(self, large: Any, prompts: Sequence[Any], quantile: float | None = None,
                        params: SamplingParams | None = None, steps_per_prompt: int = 4, seed: int = 0) -> float:
        """Set the threshold to the `quantile` of the statistic over calibration steps (steps above it get
        routed, so about 1 - quantile of them) and return it."""
        quantile = self.quantile if quantile is None else check_float("quantile", quantile, 0.0, 1.0)
        values = sorted(await self.statistics(large, prompts, params, steps_per_prompt, seed))
        if not values:
            raise ValueError("calibration produced no steps (empty prompts list?)")
        self.threshold = quantile_of(values, quantile)
        return self.threshold

    def describe(self) -> str:
        threshold = "uncalibrated" if self.threshold is None else f"{self.threshold:.4g}"
        agree = f",agree={self.agree}" if self.agree else ""
        return f"route:rule={self.rule},threshold={threshold}{agree}"


def quantile_of(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
