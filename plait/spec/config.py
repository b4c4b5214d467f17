"""SpeculativeConfig: vLLM's `speculative_config` dict, validated once."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram", "suffix", "early_exit", "draft_model")
MODEL_METHODS = ("early_exit", "draft_model")  # drafts come from a forward pass, not from a lookup
# Drafts longer than this cost a target forward of many rows for tokens that are rarely all accepted.
MAX_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class SpeculativeConfig:
    """`method`: "ngram" (prompt lookup in the request's own tokens), "suffix" (the longest suffix match over
    the request and every running request with the same prompt, e.g. the other samples of an n > 1 request),
    "early_exit" (the target's own first `exit_layer` layers, then its final norm and LM head: no second model)
    or "draft_model" (`model`, a smaller model with the same vocabulary, its KV in a cache that shares the
    target's block tables).

    `num_speculative_tokens` is the longest draft; each request's draft length then adapts to its own acceptance
    and to the step's cost (`adaptive`, spec/cost_model.py). `prompt_lookup_max`/`_min` bound the n-gram a
    draft must match (for "suffix", the longest suffix it looks for is `suffix_max_match`). Speculation is off
    for a step in which more than `disable_by_batch_size` requests decode (None: no fixed limit; the cost model
    still decides)."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 3
    prompt_lookup_min: int = 1
    suffix_max_match: int = 16
    # A suffix draft keeps extending while the most common next token among the matches has at least this share.
    suffix_min_token_share: float = 0.3
    disable_by_batch_size: int | None = None
    adaptive: bool = True
    exit_layer: int | None = None  # early_exit: layers the draft runs (None: a quarter of the model's)
    model: str | None = None  # draft_model: a .gguf file, an HF directory or a known model name

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative_config.method must be one of {list(METHODS)}, got {self.method!r}")
        _int_in("num_speculative_tokens", self.num_speculative_tokens, 1, MAX_SPECULATIVE_TOKENS)
        _int_in("prompt_lookup_min", self.prompt_lookup_min, 1, 64)
        _int_in("prompt_lookup_max", self.prompt_lookup_max, self.prompt_lookup_min, 64)
        _int_in("suffix_max_match", self.suffix_max_match, 1, 256)
        share = self.suffix_min_token_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValueError(f"speculative_config.suffix_min_token_share must be in [0, 1], got {share!r}")
        if self.disable_by_batch_size is not None:
            _int_in("disable_by_batch_size", self.disable_by_batch_size, 1, 1 << 20)
        if self.exit_layer is not None:
            _int_in("exit_layer", self.exit_layer, 1, 1 << 10)
        if self.method == "draft_model" and not self.model:
            raise ValueError("speculative_config.model is required for method 'draft_model' (a smaller model "
                             "with the target's vocabulary)")
        if self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"speculative_config.model must be a model path or name, got {self.model!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"speculative_config.adaptive must be true or false, got {self.adaptive!r}")

    @classmethod
    def parse(cls, value: Any) -> "SpeculativeConfig | None":
        """None, a SpeculativeConfig, a dict (vLLM's keys) or its JSON text (the CLI's --speculative-config)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config must be a JSON object, got {value!r} ({e})") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict (JSON object), got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config has unknown keys {unknown}; allowed: {sorted(known)}")
        if "method" not in value:
            raise ValueError(f"speculative_config.method is required: one of {list(METHODS)}")
        return cls(**value)


def _int_in(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"speculative_config.{name} must be an integer in [{low}, {high}], got {value!r}")
