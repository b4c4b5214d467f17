"""What the engine core hands the frontend each step: new tokens only, never a copy of what came before.

Text, stop strings and logprob dictionaries are the frontend's job (`plait.engine.output_processor`), so the
engine thread does O(new tokens) work per step and a caller that stops reading costs O(its output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# (token_id, logprob, rank): the chosen token first, then the top alternatives.
RawLogprobs = list[tuple[int, float, int]]


@dataclass
class SampleDelta:
    """What one sample (child of an n>1 request) gained this step."""

    index: int
    token_ids: list[int]
    logprobs: list[RawLogprobs] | None = None  # one entry per new token, when logprobs were asked for
    finish_reason: str | None = None  # "stop", "length", "abort" once the engine ended this sample
    stop_reason: str | int | None = None


@dataclass
class EngineOutput:
    """One request's news from one step (only samples that changed are listed)."""

    request_id: str
    samples: list[SampleDelta]
    finished: bool  # every sample of the request has ended in the engine
    # Prompt logprob entries computed this step, as (prompt position, entry); positions are never repeated.
    prompt_logprobs: list[tuple[int, RawLogprobs]] = field(default_factory=list)
    num_cached_tokens: int = 0
    queue_time: float | None = None  # seconds from arrival to first scheduling
    weight_version: str | int | None = None  # the weights this step ran on (stamped by the frontend's engine loop)
