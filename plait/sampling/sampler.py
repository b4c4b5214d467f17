"""Batched token sampling: one call turns a step's [B, V] logits into one token per row.

Pipeline (vLLM semantics): logit_bias -> min_tokens masking -> repetition / presence / frequency penalties
(penalties.py) -> greedy rows take argmax; the other rows: temperature -> top-k -> top-p -> min-p -> sample.
Every stage is batched over rows with per-row parameter tensors and skipped when no row needs it.

Two choices here come from measurements on the CPU target (2 cores, [64, 49152] float32 logits):

* Sampling draws ONE uniform per row and inverts the row's CDF (`cumsum` + `searchsorted`, ~3 ms), instead of
  the Gumbel / exponential trick `argmax(probs / q)`, whose V exponential draws per row cost ~60 ms per step on
  CPU. The distribution is the same; the CDF runs in float64 with a float64 uniform, so tail tokens keep their
  probability to ~1e-16. A seeded row draws its uniform from its own generator, so its tokens do not depend on
  what else is in the batch or at which row it sits.
* top-k / top-p need the row's tokens in probability order; a full sort costs ~120 ms on CPU. Rows are first
  tried on a small `topk` candidate set (64, then 1024, then 8192 tokens); only rows whose kept set is larger
  fall through to a full sort. Which level a row finishes at depends only on that row, and every level samples
  from the same sorted-descending CDF, so seeded tokens stay batch-independent. On CUDA a full sort is cheap,
  so it goes straight there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from plait.params import SamplingParams
from plait.sampling.penalties import apply_logit_bias, apply_min_tokens, apply_penalties, needs_processing

# Temperatures below this are greedy (as in vLLM): dividing by a tiny temperature would overflow to inf/nan.
GREEDY_EPS = 1e-5

# Keeps u * total strictly below the CDF's last value in float64, so a zero-probability tail is never drawn.
_MAX_UNIFORM = 1.0 - 1e-12


@dataclass
class SamplingBatch:
    """Per-row inputs for one step; row i is one sequence to sample a token for."""

    params: list[SamplingParams]
    generators: list[torch.Generator | None]  # per-request generator when params.seed is set, else None
    output_token_ids: list[list[int]]  # tokens generated so far by each row (for penalties, min_tokens)
    prompt_token_ids: list[list[int]]  # the prompt (repetition_penalty applies to prompt + output)
    eos_token_ids: list[int]  # model's eos ids: masked while len(output) < min_tokens unless ignore_eos


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one sampled id per row
    # Per row: None if params.logprobs is None, else [(chosen_id, logprob, rank)] followed by the
    # top-`params.logprobs` alternatives as (id, logprob, rank); logprobs of the RAW logits, rank 1 = most likely.
    logprobs: list[list[tuple[int, float, int]] | None]


@dataclass
class TokenLogprobs:
    """Per row: the logprob and rank of one given token, plus the top-k tokens, under log_softmax of raw logits.

    CPU tensors. Rank is 1 + the number of strictly more likely tokens (ties share the better rank).
    """

    token_ids: torch.Tensor  # [N] int64
    logprobs: torch.Tensor  # [N] float32
    ranks: torch.Tensor  # [N] int64
    top_ids: torch.Tensor  # [N, k] int64, most likely first
    top_logprobs: torch.Tensor  # [N, k] float32
    top_ranks: torch.Tensor  # [N, k] int64

    def to_lists(self, num_top: Sequence[int] | None = None) -> list[list[tuple[int, float, int]]]:
        """Per row [(token, logprob, rank)] + the first `num_top[row]` (default all k) top entries."""
        ids, lps, ranks = self.token_ids.tolist(), self.logprobs.tolist(), self.ranks.tolist()
        top = zip(self.top_ids.tolist(), self.top_logprobs.tolist(), self.top_ranks.tolist())
        rows = []
        for i, (t_ids, t_lps, t_ranks) in enumerate(top):
            k = len(t_ids) if num_top is None else num_top[i]
            rows.append([(ids[i], lps[i], ranks[i])] + list(zip(t_ids[:k], t_lps[:k], t_ranks[:k])))
        return rows


class Sampler:
    """Stateless; all per-request state (generators, token histories) arrives in the SamplingBatch."""

    # topk candidate-set sizes tried on CPU before a full sort for top-k / top-p rows.
    candidate_sizes: tuple[int, ...] = (64, 1024, 8192)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        num_rows, vocab = logits.shape
        params = batch.params
        if not (len(params) == len(batch.generators) == len(batch.output_token_ids) == num_rows):
            raise ValueError(f"SamplingBatch has {len(params)} params, {len(batch.generators)} generators and "
                             f"{len(batch.output_token_ids)} output lists for {num_rows} logits rows")
        device = logits.device

        if needs_processing(params, [len(o) for o in batch.output_token_ids]):
            # Work on an owned contiguous copy: the caller's logits stay raw (logprobs, speculative decoding).
            x = torch.empty((num_rows, vocab), dtype=torch.float32, device=device).copy_(logits)
            apply_logit_bias(x, params)
            apply_min_tokens(x, params, batch.output_token_ids, batch.eos_token_ids)
            if any(p.uses_penalties for p in params):
                apply_penalties(x, params, batch.output_token_ids, batch.prompt_token_ids)
        else:
            x = logits.float()  # no copy when already float32; nothing below writes into x

        greedy_rows = [i for i, p in enumerate(params) if p.temperature < GREEDY_EPS]
        sample_rows = [i for i, p in enumerate(params) if p.temperature >= GREEDY_EPS]
        if not sample_rows:
            tokens = x.argmax(dim=-1)
        elif not greedy_rows:
            tokens = self._sample(x, params, batch.generators)
        else:
            tokens = torch.empty(num_rows, dtype=torch.long, device=device)
            g_idx = torch.tensor(greedy_rows, device=device)
            s_idx = torch.tensor(sample_rows, device=device)
            tokens[g_idx] = x[g_idx].argmax(dim=-1)
            tokens[s_idx] = self._sample(x[s_idx], [params[i] for i in sample_rows],
                                         [batch.generators[i] for i in sample_rows])

        token_ids = tokens.tolist()
        return SamplerOutput(token_ids=token_ids, logprobs=self._logprobs(logits, tokens, params))

    # ----------------------------------------------------------------------------------------- sampling

    def _sample(self, x: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
        """Sample one token per row of processed logits `x` (no greedy rows here)."""
        n, vocab = x.shape
        device = x.device
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
        probs = torch.softmax(x / temperature[:, None], dim=-1)
        uniform = _uniforms(generators, device)
        min_p = [p.min_p for p in params]
        min_p_t = torch.tensor(min_p, dtype=torch.float32, device=device) if any(min_p) else None

        top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        truncated = [i for i, p in enumerate(params) if top_k[i] < vocab or p.top_p < 1.0]
        if not truncated:
            return _sample_unsorted(probs, uniform, min_p_t)

        tokens = torch.empty(n, dtype=torch.long, device=device)
        plain = [i for i in range(n) if top_k[i] == vocab and params[i].top_p >= 1.0]
        if plain:
            idx = torch.tensor(plain, device=device)
            tokens[idx] = _sample_unsorted(probs[idx], uniform[idx], None if min_p_t is None else min_p_t[idx])

        top_k_t = torch.tensor(top_k, dtype=torch.long, device=device)
        top_p_t = torch.tensor([p.top_p for p in params], dtype=torch.float64, device=device)
        sizes = self.candidate_sizes if device.type == "cpu" else ()
        pending = torch.tensor(truncated, device=device)
        row_total = probs.sum(dim=-1, dtype=torch.float64) if sizes else None
        for size in [s for s in sizes if s < vocab] + [vocab]:
            rows = probs[pending]
            if size < vocab:
                vals, ids = rows.topk(size, dim=-1)
            else:
                vals, ids = rows.sort(dim=-1, descending=True)
            got, fits = _sample_sorted(vals, ids, top_k_t[pending], top_p_t[pending],
                                       None if min_p_t is None else min_p_t[pending], uniform[pending],
                                       row_total[pending] if size < vocab else None, vocab)
            if size == vocab or bool(fits.all()):
                tokens[pending] = got
                break
            tokens[pending[fits]] = got[fits]
            pending = pending[~fits]
        return tokens

    # ----------------------------------------------------------------------------------------- logprobs

    def _logprobs(self, logits: torch.Tensor, tokens: torch.Tensor,
                  params: list[SamplingParams]) -> list[list[tuple[int, float, int]] | None]:
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        out: list[list[tuple[int, float, int]] | None] = [None] * len(params)
        if not rows:
            return out
        ks = [params[i].logprobs for i in rows]
        if len(rows) == len(params):
            result = self.top_logprobs(logits, tokens, max(ks))
        else:
            idx = torch.tensor(rows, device=logits.device)
            result = self.top_logprobs(logits[idx], tokens[idx], max(ks))
        for i, entry in zip(rows, result.to_lists(ks)):
            out[i] = entry
        return out

    @staticmethod
    def top_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int,
                     chunk_rows: int = 256) -> TokenLogprobs:
        """Logprob and rank of `token_ids[i]` under row i of `logits`, plus row i's top-`k` tokens.

        Works for any [N, V] logits: the sampler passes the step's rows and the sampled tokens; for
        prompt_logprobs the engine passes the prompt positions' logits [T, V] with the NEXT prompt tokens
        (`logits[:-1]`, `prompt[1:]`; the first prompt token has no logprob). Rows are processed `chunk_rows` at
        a time so a long prompt never materialises a full [T, V] float32 log_softmax.
        """
        n = logits.shape[0]
        token_ids = token_ids.to(device=logits.device, dtype=torch.long)
        parts: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, n, chunk_rows):
            lp = torch.log_softmax(logits[start:start + chunk_rows].float(), dim=-1)
            chosen = token_ids[start:start + chunk_rows]
            chosen_lp = lp.gather(1, chosen[:, None])
            ranks = (lp > chosen_lp).sum(dim=-1) + 1
            top_lp, top_ids = lp.topk(k, dim=-1) if k > 0 else (lp[:, :0], chosen[:, None][:, :0])
            # Competition ranks among the top-k: every strictly better token is itself in the top-k.
            top_ranks = (top_lp[:, None, :] > top_lp[:, :, None]).sum(dim=-1) + 1
            parts.append((chosen, chosen_lp[:, 0], ranks, top_ids, top_lp, top_ranks))
        if not parts:
            empty = torch.empty(0, dtype=torch.long)
            return TokenLogprobs(empty, empty.float(), empty, empty.view(0, k), empty.float().view(0, k),
                                 empty.view(0, k))
        cols = [torch.cat(c).cpu() for c in zip(*parts)]
        return TokenLogprobs(*cols)


# --------------------------------------------------------------------------------------------- helpers


def _uniforms(generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One float64 uniform in [0, 1) per row: unseeded rows in one batched draw, seeded rows one draw each from
    their own generator (on the generator's device, then moved), so a seeded row never sees the batch."""
    n = len(generators)
    u = torch.rand(n, dtype=torch.float64, device=device)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if seeded:
        draws = [torch.rand(1, dtype=torch.float64, generator=generators[i], device=generators[i].device)
                 for i in seeded]
        u[torch.tensor(seeded, device=device)] = torch.cat([d.to(device) for d in draws])
    return u.clamp_(max=_MAX_UNIFORM)


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Column index per row drawn with probability weights / row sum (weights >= 0, any scale).

    First index whose float64 cumulative sum exceeds u * total; zero-weight entries are never chosen.
    """
    cdf = weights.cumsum(dim=-1, dtype=torch.float64)
    target = (uniform * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=weights.shape[1] - 1)[:, 0]


def _sample_unsorted(probs: torch.Tensor, uniform: torch.Tensor, min_p: torch.Tensor | None) -> torch.Tensor:
    """Rows without top-k / top-p: sample straight from the vocabulary order, no sort needed."""
    if min_p is not None:
        probs = probs.masked_fill(probs < min_p[:, None] * probs.amax(dim=-1, keepdim=True), 0.0)
    return _inverse_cdf(probs, uniform)


def _sample_sorted(vals: torch.Tensor, ids: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                   min_p: torch.Tensor | None, uniform: torch.Tensor, row_total: torch.Tensor | None,
                   vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply top-k, top-p, min-p to the `K` most likely tokens of each row and sample.

    `vals` are probabilities sorted descending with their token `ids`; `row_total` is each row's whole
    probability mass (None when K == vocab, i.e. a full sort). In descending order every filter keeps a prefix,
    so the kept set is the first `n_keep` candidates, found by counting on one float64 cumsum: no [rows, K]
    masks. Returns (tokens, fits): `fits[i]` says row i's kept set lies inside the candidates, so its token is
    exact; rows that do not fit are retried with a larger K.
    """
    size = vals.shape[1]
    cum = vals.cumsum(dim=-1, dtype=torch.float64)
    k_fits = top_k <= size
    n_keep = top_k.clamp(max=size)
    # top-p renormalises over the top-k survivors: their mass, or the whole row's when top-k is disabled.
    mass_k = cum.gather(1, (n_keep - 1)[:, None])[:, 0]
    total = mass_k if row_total is None else torch.where(k_fits, mass_k, row_total)
    # Token j stays while the mass strictly before it, cum[j - 1], is below top_p * total: the smallest prefix
    # whose mass reaches top_p, never empty.
    below = torch.searchsorted(cum, (top_p * total)[:, None], right=False)[:, 0]
    n_keep = torch.minimum(n_keep, (below + 1).clamp(max=size))
    if min_p is not None:
        n_min_p = (vals >= (min_p * vals[:, 0])[:, None]).sum(dim=-1)
        n_keep = torch.minimum(n_keep, n_min_p)
    # Inverse CDF restricted to the prefix: the first index whose cumsum exceeds u * (mass of the prefix).
    target = uniform * cum.gather(1, (n_keep - 1)[:, None])[:, 0]
    pick = torch.minimum(torch.searchsorted(cum, target[:, None], right=True)[:, 0], n_keep - 1)
    tokens = ids.gather(1, pick[:, None])[:, 0]
    if row_total is None:
        return tokens, torch.ones_like(k_fits)
    # The kept set is inside the candidates when top-k is within them, or top-k is off and the candidates hold
    # top_p of the mass, or min-p already cut inside them (when top-p's total is known).
    fits = k_fits | ((top_k >= vocab) & (cum[:, -1] >= top_p * total))
    if min_p is not None:
        fits |= (n_min_p < size) & ((top_k >= vocab) | (top_p >= 1.0))
    return tokens, fits
