"""Per-request state the scheduler tracks (pure Python)."""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field

from plait.cache.block_pool import BlockKey
from plait.params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """One sequence being generated. n>1 prompts become n Requests sharing a `group_id` and prompt."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: params.max_tokens or what the context leaves
    eos_token_ids: frozenset[int]
    arrival: float = field(default_factory=time.monotonic)
    group_id: str | None = None
    sample_index: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is in the cache
    num_cached_prompt: int = 0  # prompt tokens served by the prefix cache at admission
    status: Status = Status.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    first_scheduled: float | None = None
    # Draft tokens for the next step (speculative decoding): set before scheduling, verified with the last token.
    spec_token_ids: list[int] = field(default_factory=list)
    # Prefix-cache keys of the leading full blocks of all_token_ids, extended as tokens come (never recomputed:
    # a request that waits many steps must not re-hash its whole prompt each step).
    _block_keys: list[BlockKey] = field(default_factory=list, repr=False)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_pending(self) -> int:
        """Tokens known but not yet in the KV cache."""
        return self.num_tokens - self.num_computed

    @property
    def prefill_done(self) -> bool:
        return self.num_computed >= len(self.prompt_token_ids)

    def block_keys(self, block_size: int) -> list[BlockKey]:
        """Keys of every full block of the request's tokens (cached; only new full blocks are hashed)."""
        keys = self._block_keys
        full = self.num_tokens // block_size
        if len(keys) < full:
            tokens = self.all_token_ids
            parent = keys[-1] if keys else None
            for i in range(len(keys), full):
                parent = BlockKey.chain(parent, tuple(tokens[i * block_size: (i + 1) * block_size]))
                keys.append(parent)
        return keys

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Only the first sample of an n>1 request computes prompt logprobs; its siblings reuse its blocks."""
        return self.params.prompt_logprobs is not None and self.sample_index == 0

    @property
    def seed(self) -> int | None:
        """This sample's seed: the request's own for sample 0, a hash of (seed, index) for the others, so
        sample i of seed s never repeats sample 0 of seed s + i."""
        seed = self.params.seed
        if seed is None or self.sample_index == 0:
            return seed
        digest = hashlib.blake2b(f"{seed}:{self.sample_index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1  # 63 bits: a valid torch seed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def sort_key(self) -> tuple[int, float, int]:
        """Lower runs first: priority, then arrival, then sample index."""
        return (self.params.priority, self.arrival, self.sample_index)
