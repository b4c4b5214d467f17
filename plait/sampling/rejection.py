"""Verifying draft tokens without changing the output distribution (speculative decoding).

Greedy: the target's own argmax at each drafted position; the longest run of drafts equal to it is accepted, then
the target's token after the run (a correction, or a bonus token when every draft matched). The output is exactly
the one-token-at-a-time greedy output whenever the target's logits at those positions are the same (bitwise with
`batch_invariant=True`).

Sampling (Leviathan et al. / Chen et al., `../shared/papers.md`): a drafter that proposes one token x with
certainty (q = one-hot, as n-gram and suffix drafts are) is accepted with probability min(1, p(x) / q(x)) = p(x),
where p is the target's distribution after every sampling filter (temperature, top-k, top-p, min-p, logit bias,
min_tokens). On rejection the token is drawn from norm(max(0, p - q)) = p with x removed. Each emitted token is
then distributed exactly as p: P(x) = p(x) + (1 - p(x)) * 0 for the draft, and (1 - p(x)) * p(y) / (1 - p(x)) for
any y != x. Drawing from "p without x" is done by drawing from p (the sampler's own exact path) until the token is
not x, which is that distribution exactly; after a few tries (p(x) near 1) it falls back to an explicit sort.
"""

from __future__ import annotations

import torch

from plait.params import SamplingParams
from plait.sampling.penalties import apply_logit_bias, apply_min_tokens, needs_processing
from plait.sampling.sampler import Sampler, SamplingBatch, _inverse_cdf, _sample_sorted

# Redraws from p before building "p without x" explicitly (each redraw succeeds with probability 1 - p(x)).
MAX_REDRAWS = 8
# Candidate set tried before a full sort when finding the top-k / top-p kept set.
_CANDIDATES = 1024


def accepted_greedy(targets: list[int], drafts: list[int]) -> int:
    """Length of the leading run of drafts equal to the target's own tokens at their positions."""
    n = 0
    while n < len(drafts) and drafts[n] == targets[n]:
        n += 1
    return n


def filtered_weights(x: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Unnormalised sampling weights of processed logits rows `x` [R, V] under `params`: exp((x - max) / T) with
    top-k / top-p / min-p applied as the sampler applies them (tokens outside the kept set get 0)."""
    w = torch.softmax(x.float() / params.temperature, dim=-1)
    vocab = w.shape[1]
    top_k = params.top_k if 0 < params.top_k < vocab else vocab
    if top_k == vocab and params.top_p >= 1.0:
        if params.min_p > 0:
            w = w.masked_fill(w < params.min_p * w.amax(dim=-1, keepdim=True), 0.0)
        return w
    rows = w.shape[0]
    size = min(vocab, max(_CANDIDATES, top_k))
    vals, ids = w.topk(size, dim=-1) if size < vocab else w.sort(dim=-1, descending=True)
    k_t = torch.full((rows,), top_k, dtype=torch.long)
    p_t = torch.full((rows,), params.top_p, dtype=torch.float64)
    m_t = torch.full((rows,), params.min_p, dtype=torch.float32) if params.min_p > 0 else None
    zeros = torch.zeros(rows, dtype=torch.float64)
    total = w.sum(dim=-1).double() if size < vocab else None
    _, need = _sample_sorted(vals, ids, k_t, p_t, m_t, zeros, total, vocab)
    if size < vocab and bool((need > size).any()):
        vals, ids = w.sort(dim=-1, descending=True)
        _, need = _sample_sorted(vals, ids, k_t, p_t, m_t, zeros, None, vocab)
    keep = torch.arange(vals.shape[1])[None, :] < need.long()[:, None]
    out = torch.zeros_like(w)
    out.scatter_(1, ids, torch.where(keep, vals, 0.0))
    return out


def acceptance_probabilities(x: torch.Tensor, drafts: list[int], params: SamplingParams) -> list[float]:
    """p_i(draft_i) under the filtered, normalised distribution of each processed logits row x[i]."""
    w = filtered_weights(x, params).double()
    chosen = w.gather(1, torch.tensor(drafts, dtype=torch.long)[:, None])[:, 0]
    return (chosen / w.sum(dim=-1)).tolist()


def first_rejection(probabilities: list[float], generator: torch.Generator | None) -> int:
    """Index of the first rejected draft (len(probabilities) when all are accepted): draft i is accepted with
    probability probabilities[i], one uniform each, drawn from the request's generator when it has one."""
    for i, p in enumerate(probabilities):
        u = torch.rand(1, dtype=torch.float64, generator=generator).item()
        if u >= p:
            return i
    return len(probabilities)


def sample_without(x_row: torch.Tensor, excluded: int, params: SamplingParams,
                   generator: torch.Generator | None) -> int:
    """One token from the row's filtered distribution with `excluded` removed (explicit: the redraw fallback)."""
    w = filtered_weights(x_row[None, :], params)
    w[0, excluded] = 0.0
    if not bool(w.sum() > 0):  # p was all on the excluded token; rejection then had probability 0
        return excluded
    u = torch.rand(1, dtype=torch.float64, generator=generator).clamp_(max=1.0 - 1e-12)
    return int(_inverse_cdf(w, u)[0])


def verify_sampled(sampler: Sampler, logits: torch.Tensor, drafts: list[int], params: SamplingParams,
                   generator: torch.Generator | None, output_token_ids: list[int], prompt_token_ids: list[int],
                   eos_token_ids: list[int]) -> list[int]:
    """The tokens one request emits for its k drafts, given the target's raw logits rows [k + 1, V] at the
    positions before each draft and after the last: the accepted drafts, then one token drawn from p (all
    accepted) or from p without the rejected draft. Penalties and grammars are not supported here (such requests
    never draft: spec/speculator.py)."""
    outputs = [output_token_ids + drafts[:i] for i in range(len(drafts) + 1)]
    x = logits
    if needs_processing([params], [len(output_token_ids)]):  # logit bias, min_tokens (per position)
        x = logits.float().clone()
        apply_logit_bias(x, [params] * len(outputs))
        apply_min_tokens(x, [params] * len(outputs), outputs, eos_token_ids)
    accepted = first_rejection(acceptance_probabilities(x[:-1], drafts, params), generator)
    excluded = drafts[accepted] if accepted < len(drafts) else None
    batch = SamplingBatch([params], [generator], [outputs[accepted]], [prompt_token_ids], eos_token_ids)
    for _ in range(MAX_REDRAWS):  # p without the rejected draft: draw from p until it is not that token
        token = sampler(logits[accepted: accepted + 1], batch).token_ids[0]
        if token != excluded:
            break
    else:
        token = sample_without(x[accepted], excluded, params, generator)
    return drafts[:accepted] + [token]
