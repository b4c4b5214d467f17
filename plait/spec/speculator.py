"""Per-step drafting: which requests speculate, how many tokens each drafts, and the acceptance metrics.

Before each schedule the engine core asks `propose` to set `Request.spec_token_ids` on decoding requests; the
scheduler schedules [last token + drafts] as one chunk and the runner verifies it; `observe` then learns from how
many drafts were accepted.

Each request's draft tokens are worth alpha ** j (the chance the j-th is accepted; alpha: the request's own recent
acceptance per drafted token). The step keeps the best tokens across all requests while its expected tokens per
second rises, pricing each step size from measured step times (spec/cost_model.py) plus, for drafts that take
forward passes (early_exit, draft_model), the passes. So a large batch, where more rows cost more than they bring,
drafts nothing. With `adaptive=False` every eligible request drafts up to `num_speculative_tokens`.

Model-based methods get placeholder drafts here; the runner's drafter fills them in (spec/model_drafter.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.core.request import Request, Status
from plait.spec.config import MODEL_METHODS, SpeculativeConfig
from plait.spec.cost_model import StepCostModel
from plait.spec.ngram import NgramIndex
from plait.spec.suffix import SuffixFamily
from plait.spec.tokens import TokenView

# Acceptance estimate: exponentially forgetting counts from a prior of alpha = 0.6 (worth two counts), so a new
# request drafts a token or more at up to ~16 decodes even before it has shown how well it is drafted for.
_ACCEPT_DECAY = 0.8
_PRIOR_ACCEPTED, _PRIOR_REJECTED = 1.2, 0.8
# Before any step time is measured, a step's fixed part is taken to cost as much as this many tokens.
_PRIOR_FIXED_TOKENS = 16.0
# Expected speed-up a step's drafts must promise over not drafting.
_MIN_GAIN = 0.05


@dataclass
class SpecStats:
    """Totals since the engine started (vLLM's spec_decode metrics)."""

    num_drafts: int = 0  # verifications that had at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # accepted tokens by draft position (index 0: the first draft token)
    accepted_per_position: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens per target forward of a request that drafted: its accepted drafts plus the one it samples."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0


@dataclass
class _RequestSpec:
    ngram: NgramIndex | None
    family: SuffixFamily | None
    accepted: float = _PRIOR_ACCEPTED
    rejected: float = _PRIOR_REJECTED

    @property
    def alpha(self) -> float:
        return self.accepted / (self.accepted + self.rejected)


def eligible(request: Request) -> bool:
    """Requests whose verification needs nothing position-dependent beyond min_tokens: penalties and grammars
    change each position's distribution with the tokens before it, so they decode one token at a time."""
    p = request.params
    return p.speculative and not p.uses_penalties and p.structured_outputs is None


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self.cost = StepCostModel()
        self.stats = SpecStats(accepted_per_position=[0] * config.num_speculative_tokens)
        self._requests: dict[str, _RequestSpec] = {}
        self._families: dict[tuple[int, ...], SuffixFamily] = {}
        self._family_of: dict[str, tuple[int, ...]] = {}
        self.model_based = config.method in MODEL_METHODS
        self._pass_seconds = 0.0  # exponential average of one drafting pass (model-based methods)

    # ------------------------------------------------------------------------------------------- drafting
    def propose(self, running: list[Request]) -> None:
        for request in running:  # drafts are for one step only
            request.spec_token_ids = []
        decodes = [r for r in running if r.status is Status.RUNNING and r.num_pending == 1]
        limit = self.config.disable_by_batch_size
        if not decodes or (limit is not None and len(decodes) > limit):
            return
        candidates: list[tuple[Request, list[int], float]] = []
        synced: set[int] = set()
        for request in decodes:
            if not eligible(request):
                continue
            # The sampled token after the drafts must fit too: within max_tokens and the context.
            room = min(request.max_tokens - len(request.output_token_ids),
                       self.max_model_len - request.num_tokens) - 1
            k = min(self.config.num_speculative_tokens, room)
            if k <= 0:
                continue
            state = self._state(request)
            if self.model_based:
                draft = [0] * k  # placeholders: the runner's drafter writes the tokens
            elif state.family is not None:
                if id(state.family) not in synced:
                    state.family.sync()
                    synced.add(id(state.family))
                c = self.config
                draft = state.family.propose(request.request_id, k, c.suffix_max_match, c.prompt_lookup_min,
                                             c.suffix_min_token_share)
            else:
                draft = state.ngram.propose(TokenView(request.prompt_token_ids, request.output_token_ids), k)
            if draft:
                candidates.append((request, draft, state.alpha))
        if not candidates:
            return
        lengths = (self._plan(len(decodes), candidates) if self.config.adaptive
                   else [len(d) for _, d, _ in candidates])
        for (request, draft, _), length in zip(candidates, lengths):
            request.spec_token_ids = draft[:length]

    def _plan(self, num_decodes: int, candidates: list[tuple[Request, list[int], float]]) -> list[int]:
        """How many of its draft tokens each candidate keeps: the j-th token of a request is accepted with chance
        alpha ** j; take tokens best first while the step's expected tokens per second still rises (step times
        from the cost model, plus the draft passes for model-based drafts). Before any step time is known, each
        token must beat a prior share of the step instead."""
        tokens = sorted(((alpha ** j, i) for i, (_, draft, alpha) in enumerate(candidates)
                         for j in range(1, len(draft) + 1)), reverse=True)
        lengths = [0] * len(candidates)
        base = self.cost.step_time(num_decodes)
        if base is None:
            share = num_decodes / (_PRIOR_FIXED_TOKENS + num_decodes)
            for value, i in tokens:
                if value > share:
                    lengths[i] += 1
            return lengths
        best_rate, best, gain, depth, deepest = num_decodes / base, 0, 0.0, [0] * len(candidates), 0
        for count, (value, i) in enumerate(tokens, start=1):
            gain += value
            depth[i] += 1
            deepest = max(deepest, depth[i])
            seconds = self.cost.step_time(num_decodes + count)
            if seconds is None:  # a size the model cannot price yet (no line fit): draft no further
                break
            if self.model_based:
                seconds += self._pass_seconds * deepest
            rate = (num_decodes + gain) / seconds
            # Drafting at all must promise a clear gain: the step times are estimates from a noisy machine.
            if rate > best_rate * (1.0 if best else 1.0 + _MIN_GAIN):
                best_rate, best = rate, count
        for _, i in tokens[:best]:
            lengths[i] += 1
        return lengths

    def _state(self, request: Request) -> _RequestSpec:
        state = self._requests.get(request.request_id)
        if state is None:
            if self.config.method == "suffix":
                key = tuple(request.prompt_token_ids)
                family = self._families.get(key)
                if family is None:
                    family = self._families[key] = SuffixFamily(request.prompt_token_ids)
                family.add_member(request.request_id, request.output_token_ids)
                self._family_of[request.request_id] = key
                state = _RequestSpec(None, family)
            else:
                state = _RequestSpec(NgramIndex(self.config.prompt_lookup_min, self.config.prompt_lookup_max), None)
            self._requests[request.request_id] = state
        return state

    # ------------------------------------------------------------------------------------------- learning
    def observe_step(self, num_tokens: int, seconds: float, draft_seconds: float = 0.0, draft_passes: int = 0,
                     decode_only: bool = True) -> None:
        """One step: its token count and time without drafting, and the drafting passes' time."""
        self.cost.observe(num_tokens, seconds, decode_only)
        if draft_passes:
            per_pass = draft_seconds / draft_passes
            self._pass_seconds = 0.9 * self._pass_seconds + 0.1 * per_pass if self._pass_seconds else per_pass

    def observe(self, request_id: str, drafted: int, accepted: int) -> None:
        """One verification of `drafted` tokens of which the first `accepted` matched."""
        if drafted == 0:
            return
        s = self.stats
        s.num_drafts += 1
        s.num_draft_tokens += drafted
        s.num_accepted_tokens += accepted
        for i in range(accepted):
            s.accepted_per_position[i] += 1
        state = self._requests.get(request_id)
        if state is not None:
            state.accepted = _ACCEPT_DECAY * state.accepted + accepted
            state.rejected = _ACCEPT_DECAY * state.rejected + (1 if accepted < drafted else 0)

    def drop(self, request_id: str) -> None:
        """The request finished or was preempted for good: forget its index (a preempted request keeps it)."""
        self._requests.pop(request_id, None)
        key = self._family_of.pop(request_id, None)
        if key is not None:
            family = self._families.get(key)
            if family is not None:
                family.remove_member(request_id)
                if not family.members:
                    del self._families[key]
