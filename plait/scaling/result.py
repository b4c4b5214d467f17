"""What a strategy returns: the chosen answer, every sample it looked at, and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Sample:
    """One finished completion of the question's prompt.

    `answer` is the extracted final answer in canonical form (None when the text has none). `mean_logprob` is the
    model's mean log-probability of its own tokens (None when logprobs were not recorded); `score` is whatever the
    strategy ranked it by (a reward, an RPC confidence), if anything.
    """

    index: int
    text: str
    answer: str | None
    num_tokens: int
    mean_logprob: float | None = None
    finish_reason: str | None = None
    score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        return cls(**{k: d.get(k) for k in ("index", "text", "answer", "num_tokens", "mean_logprob",
                                            "finish_reason", "score")})


@dataclass
class ScalingResult:
    """The outcome of one `strategy.solve(...)`.

    samples_used: samples that entered the decision (finished and counted). samples_launched: samples started,
    including any aborted once the strategy decided; it never exceeds the strategy's budget. generated_tokens
    counts every token generated for this question, aborted samples' partial tokens included, so it is the cost.
    votes: answer -> weight (a count for majority votes, a summed confidence for RPC, a reward for best-of-N).
    details: what a step-wise strategy adds (search: expansions; routing: steps and tokens per model).
    """

    strategy: str
    answer: str | None
    text: str
    samples: list[Sample]
    samples_used: int
    samples_launched: int
    prompt_tokens: int
    generated_tokens: int
    wall_s: float
    votes: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    details: dict = field(default_factory=dict)

    def to_dict(self, with_samples: bool = True) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d
