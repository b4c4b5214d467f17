"""Structured output in the runner: one grammar matcher per constrained request, one batched mask per step.

Per step: `masks(ids)` fills an int32 bitmask for all constrained rows in one llguidance call (its executor
computes the rows in parallel, GIL released), unpacks it to a bool [R, V] tensor, and the sampler applies it to
the logits before anything else (`apply_allowed`), so greedy, sampled, seeded, penalised rows and the logprobs
all see the constrained distribution. `advance(ids, tokens)` feeds each sampled token to its matcher and reports
the requests whose grammar can go no further: the engine finishes those with `stop`.

Unconstrained rows pay nothing: with no constrained row in a step, none of this runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from plait.params import SamplingParams
from plait.sampling.structured_compiler import GrammarCompiler

log = logging.getLogger("plait.structured")


@dataclass
class AllowedTokens:
    """The grammar masks of one step: `allowed[j]` is the allowed-token mask of logits row `rows[j]`."""

    rows: list[int]
    allowed: torch.Tensor  # [len(rows), V] bool


def apply_allowed(logits: torch.Tensor, masks: AllowedTokens) -> torch.Tensor:
    """A float32 copy of `logits` with disallowed tokens at -inf (the caller's logits stay raw).

    `torch.where` rather than `masked_fill_`: branch-free, ~2-4x faster on CPU for the mostly-allowed and
    mostly-forbidden masks grammars produce (measured on [32, 49152]).
    """
    ninf = torch.tensor(float("-inf"), device=logits.device)
    if len(masks.rows) == logits.shape[0] and masks.rows == list(range(logits.shape[0])):
        return torch.where(masks.allowed, logits.float(), ninf)
    x = logits.float().clone()
    idx = torch.tensor(masks.rows, device=x.device)
    x[idx] = torch.where(masks.allowed, x[idx], ninf)
    return x


class StructuredState:
    """The runner's grammar matchers, keyed by request id (they survive preemption, like the token history)."""

    def __init__(self, compiler: GrammarCompiler) -> None:
        self.compiler = compiler
        self._matchers: dict = {}
        self._executor = None
        self._words = (compiler.vocab_size + 31) // 32

    def prepare(self, params: SamplingParams) -> None:
        """Compile (or find cached) the request's grammar; any thread. Raises ValueError for a bad spec."""
        if params.structured_outputs is not None:
            self.compiler.compile(params.structured_outputs)

    def register(self, request_id: str, params: SamplingParams) -> None:
        if params.structured_outputs is not None:
            self._matchers[request_id] = self.compiler.matcher(params.structured_outputs)

    def drop(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)

    def constrained(self, request_ids: list[str]) -> bool:
        return bool(self._matchers) and any(rid in self._matchers for rid in request_ids)

    def masks(self, request_ids: list[str], vocab: int, device: torch.device) -> AllowedTokens | None:
        """The allowed tokens of every constrained row among `request_ids` (the step's sampled rows, in order)."""
        rows = [i for i, rid in enumerate(request_ids) if rid in self._matchers]
        if not rows:
            return None
        matchers = [self._matchers[request_ids[i]] for i in rows]
        bits = np.zeros((len(rows), self._words), dtype=np.int32)
        if len(rows) == 1:  # no thread hop for one row
            matchers[0].unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        else:
            if self._executor is None:
                import llguidance

                self._executor = llguidance.LLExecutor()
            self._executor.unsafe_compute_mask_ptr([(m, j) for j, m in enumerate(matchers)], bits.ctypes.data,
                                                   self._words * 4, len(rows))
        allowed = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :vocab]
        empty = ~allowed.any(axis=1)
        if empty.any():
            # A matcher in an error state allows nothing; let it end on EOS rather than sample from nothing.
            for j in np.flatnonzero(empty):
                log.warning("grammar of request %s allows no token (%s); ending it", request_ids[rows[j]],
                            matchers[j].get_error() or "no error reported")
                allowed[j, [t for t in self.compiler.eos_token_ids if t < vocab]] = 1
        return AllowedTokens(rows, torch.from_numpy(allowed.view(np.bool_)).to(device))

    def advance(self, request_ids: list[str], tokens: list[int]) -> set[str]:
        """Feed each constrained request its sampled token; return the ids whose grammar is now finished."""
        done = set()
        for rid, token in zip(request_ids, tokens):
            matcher = self._matchers.get(rid)
            if matcher is None:
                continue
            if not matcher.consume_token(token) or matcher.is_stopped() or matcher.is_error():
                done.add(rid)
        return done
