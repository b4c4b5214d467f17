"""SamplingParams: what a caller asks of one generation, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Upper bound on top-k alternatives returned per position; keeps one request from blowing up memory.
MAX_LOGPROBS = 20
# Samples per prompt: each holds its own decode KV blocks, so one request must not be able to take the pool.
MAX_N = 128
# Stop strings: each is searched for after every token, so their count and length are bounded.
MAX_STOP_STRINGS = 64
MAX_STOP_LENGTH = 1024
# torch generators take 64-bit seeds; n>1 children derive theirs by hashing (seed, index).
MAX_SEED = 2**63 - 1


def _fail(name: str, allowed: str, value: object) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass
class SamplingParams:
    """Sampling settings for one prompt. Invalid values raise ValueError naming the field and its range.

    temperature == 0 means greedy. top_k == -1 (or 0) disables top-k. `seed` gives this request its own random
    stream: its draws never depend on other requests. Its logits do, by float rounding (which kernel a step's
    size picks), unless the engine runs with `batch_invariant=True`: only then are its tokens identical whatever
    else shares the batch (docs/batch_invariance.md).
    """

    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # First prompt position whose logprob is wanted (None: all, from 1). Earlier positions need no logits, so the
    # prefix cache may serve them: scoring a continuation recomputes only its own blocks.
    prompt_logprobs_start: int | None = None
    skip_special_tokens: bool = True
    priority: int = 0
    # A grammar the output must follow: StructuredOutputsParams or a dict of its fields (json, json_object,
    # regex, choice, grammar); see plait/sampling/structured_params.py.
    structured_outputs: Any = None
    # False: this request decodes one token per step even when the engine speculates (speculative_config).
    speculative: bool = True
    stop_strings: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= MAX_N:
            _fail("n", f"an integer in [1, {MAX_N}]", self.n)
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            _fail("max_tokens", "an integer >= 1 (or None for 'up to the context length')", self.max_tokens)
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            _fail("min_tokens", "an integer >= 0", self.min_tokens)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            _fail("min_tokens", f"<= max_tokens ({self.max_tokens})", self.min_tokens)
        if not _is_number(self.temperature) or self.temperature < 0:
            _fail("temperature", "a number >= 0 (0 means greedy)", self.temperature)
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            _fail("top_p", "in (0, 1]", self.top_p)
        if not isinstance(self.top_k, int) or self.top_k < -1:
            _fail("top_k", "-1 (disabled), 0 (disabled) or a positive integer", self.top_k)
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            _fail("min_p", "in [0, 1]", self.min_p)
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            _fail("repetition_penalty", "a number > 0 (1 disables it)", self.repetition_penalty)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                _fail(name, "in [-2, 2]", value)
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                _fail("logit_bias", "a mapping of token id to bias in [-100, 100]", self.logit_bias)
            clean: dict[int, float] = {}
            for tok, bias in self.logit_bias.items():
                try:
                    tok_id = int(tok)
                except (TypeError, ValueError):
                    _fail("logit_bias", "keyed by integer token ids", tok)
                if not _is_number(bias) or not -100 <= bias <= 100:
                    _fail("logit_bias", "values in [-100, 100]", bias)
                clean[tok_id] = float(bias)
            self.logit_bias = clean
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not -(2**63) <= self.seed <= MAX_SEED):
            _fail("seed", f"an integer in [-2**63, {MAX_SEED}] or None", self.seed)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS):
                _fail(name, f"an integer in [0, {MAX_LOGPROBS}] or None", value)
        if self.prompt_logprobs_start is not None:
            if (not isinstance(self.prompt_logprobs_start, int) or isinstance(self.prompt_logprobs_start, bool)
                    or self.prompt_logprobs_start < 1):
                _fail("prompt_logprobs_start", "an integer >= 1 or None", self.prompt_logprobs_start)
            if self.prompt_logprobs is None:
                _fail("prompt_logprobs_start", "None unless prompt_logprobs is set", self.prompt_logprobs_start)
        if not isinstance(self.speculative, bool):
            _fail("speculative", "true or false", self.speculative)
        if self.stop is None:
            self.stop_strings = []
        elif isinstance(self.stop, str):
            self.stop_strings = [self.stop] if self.stop else []
        elif isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) for s in self.stop):
            self.stop_strings = [s for s in self.stop if s]
        else:
            _fail("stop", "a string or a list of strings", self.stop)
        if len(self.stop_strings) > MAX_STOP_STRINGS:
            _fail("stop", f"at most {MAX_STOP_STRINGS} strings", f"{len(self.stop_strings)} strings")
        if any(len(s) > MAX_STOP_LENGTH for s in self.stop_strings):
            _fail("stop", f"strings of at most {MAX_STOP_LENGTH} characters",
                  f"a string of {max(len(s) for s in self.stop_strings)} characters")
        if self.stop_token_ids is not None:
            if not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
                _fail("stop_token_ids", "a list of non-negative integers", self.stop_token_ids)
            self.stop_token_ids = list(self.stop_token_ids)
        if not isinstance(self.priority, int):
            _fail("priority", "an integer (lower runs first)", self.priority)
        if self.structured_outputs is not None:  # imported only when used: the plait.sampling package needs torch
            from plait.sampling.structured_params import to_structured_outputs
            self.structured_outputs = to_structured_outputs(self.structured_outputs)

    @property
    def logits_from(self) -> int:
        """First prompt position whose logits prompt_logprobs needs (the logprob of token i comes from
        position i - 1)."""
        return (self.prompt_logprobs_start or 1) - 1

    @property
    def uses_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
