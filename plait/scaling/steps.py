"""Writing one reasoning step: k continuations of (prompt + partial solution) up to a step delimiter.

Step-wise strategies (step search, step routing) grow partial solutions a step at a time. A step is one request
with n=k on the prompt's token ids followed by the partial solution's token ids, stopping at the delimiter (kept
in the text, so steps concatenate back into the solution). The k children share the prompt's KV, and because the
partial solution is passed as token ids, a later step of the same solution finds its earlier KV in the prefix
cache: a suspended partial solution costs no recomputation of its full blocks when it is resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from plait.outputs import CompletionOutput
from plait.params import SamplingParams


@dataclass
class Step:
    """One written step. `ended_step`: it stopped at the delimiter. `final`: it ended at EOS or a caller's stop
    string, so the solution is complete; a step cut by its token cap is neither, and the solution goes on (the
    caller stops it at the solution's own token cap). `first_token_logprobs` are the top alternatives' logprobs at
    the step's first token (only when asked for)."""

    text: str
    token_ids: list[int]
    logprob_sum: float
    ended_step: bool
    finish_reason: str | None
    first_token_logprobs: list[float] | None = None

    @property
    def final(self) -> bool:
        return not self.ended_step and self.finish_reason != "length"


def step_params(base: SamplingParams, delimiter: str) -> SamplingParams:
    """The caller's sampling settings with the delimiter added to its stop strings and kept in the output."""
    return replace(base, n=1, stop=list(base.stop_strings) + [delimiter], include_stop_str_in_output=True,
                   logprobs=0 if base.logprobs is None else base.logprobs)


async def write_steps(engine: Any, prompt_ids: list[int], partial_ids: list[int], params: SamplingParams,
                      k: int, max_tokens: int, seed: int, delimiter: str, top_logprobs: int = 0) -> list[Step]:
    """k candidate next steps after `partial_ids`, each at most `max_tokens` tokens, in index order.

    `params` comes from `step_params`; `top_logprobs` > 0 records that many alternatives at each token (the
    router reads the first token's)."""
    sp = replace(params, n=k, max_tokens=max_tokens, seed=seed,
                 logprobs=max(top_logprobs, params.logprobs or 0))
    final = None
    async for out in engine.generate(prompt_ids + partial_ids, sp, output_kind="final"):
        final = out
    return [_step(c, delimiter, top_logprobs > 0) for c in sorted(final.outputs, key=lambda c: c.index)]


def _step(c: CompletionOutput, delimiter: str, with_first: bool) -> Step:
    ended = isinstance(c.stop_reason, str) and c.stop_reason == delimiter
    first = None
    if with_first and c.logprobs:
        first = [lp.logprob for lp in c.logprobs[0].values()]
    return Step(c.text, list(c.token_ids), c.cumulative_logprob or 0.0, ended, c.finish_reason, first)


def entropy(logprobs: list[float]) -> float:
    """Entropy (nats) of a distribution given by the logprobs of its top alternatives, renormalised over them.
    With the top 20 of a peaked distribution this is close to the full entropy; for a flat one it is at most
    log(20), still far above any useful routing threshold."""
    if not logprobs:
        return 0.0
    m = max(logprobs)
    ps = [math.exp(x - m) for x in logprobs]
    total = sum(ps)
    return -sum(p / total * math.log(p / total) for p in ps if p > 0)
