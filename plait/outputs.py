"""What a caller gets back: RequestOutput holding one CompletionOutput per sample."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """Log-probability of one token under the model's raw distribution (before sampling settings)."""

    logprob: float
    rank: int
    decoded_token: str


# One dict per position: token id -> Logprob (the chosen token plus the top-k alternatives).
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort" or None while running
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    # (first token index in token_ids, weight version) for each run of tokens made by one version of the weights;
    # more than one segment only when weights changed mid-request (update_weights mode 'continue').
    weight_versions: list[tuple[int, str | int | None]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    weight_version: str | int | None = None  # the weights that made the latest token (None: as loaded)


@dataclass
class ScoreOutput:
    """The model's log-probability of a given continuation after a prompt (`LLM.score`, `AsyncLLM.score`)."""

    token_ids: list[int]  # the continuation's tokens
    token_logprobs: list[float]  # one per continuation token, given the prompt and the tokens before it
    logprob: float  # their sum
    num_cached_tokens: int = 0  # prompt tokens the prefix cache served (not recomputed)
