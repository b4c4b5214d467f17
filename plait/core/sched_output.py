"""The data contract between scheduler and runner: plain data, one object per step."""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.params import SamplingParams


@dataclass
class NewRequestData:
    """Sent once, the first time the runner sees a request: what it needs to sample for it."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int | None


@dataclass
class ScheduledChunk:
    """Compute `token_ids` at positions start.. of this request; sample a token after it when `sample`."""

    request_id: str
    token_ids: list[int]
    start: int
    block_table: list[int]  # the request's live table in the KV manager: read it during this step only
    sample: bool
    # Positions of this chunk whose next-token logprobs the caller asked for (prompt_logprobs), else False.
    prompt_logprobs: bool = False
    # Speculative decoding: the last `num_draft` of token_ids are drafts; the runner verifies them against the
    # target's own choices and samples after the accepted run (so `sample` is True).
    num_draft: int = 0
    # Other samples of the same prompt that fork from this request once this chunk completes its prompt: each
    # samples its first token from this chunk's last logits row with its own sampling state (see Scheduler).
    fork_ids: list[str] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    new_requests: list[NewRequestData] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)  # runner may drop their state
    num_preempted: int = 0
    # (source, destination) KV blocks the runner copies before this step's forward: the partial last prompt block
    # of each fork made by the previous step's update (copy-on-write).
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def empty(self) -> bool:
        return not self.chunks


@dataclass
class SampledToken:
    token_id: int
    # [(token_id, logprob, rank)]: chosen first, then the top alternatives; None when not asked for.
    logprobs: list[tuple[int, float, int]] | None = None
    # Structured output: the request's grammar can go no further after this token; it finishes with 'stop'.
    grammar_ended: bool = False


@dataclass
class ModelOutput:
    """What the runner returns for one step: the new tokens of each chunk that asked for one: one token, or with
    drafts the accepted drafts followed by the token sampled after them."""

    sampled: dict[str, list[SampledToken]] = field(default_factory=dict)
    # request id -> (position of the chunk's first token, logprob entries of the prompt tokens after each
    # position of the chunk); the position lets the engine place them right after a preemption recomputes.
    prompt_logprobs: dict[str, tuple[int, list[list[tuple[int, float, int]]]]] = field(default_factory=dict)
    draft_seconds: float = 0.0  # time spent in model-based drafting passes this step (speculative decoding)
