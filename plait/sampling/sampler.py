"""Batched token sampling: one call turns a step's [B, V] logits into one token per row.

Pipeline (vLLM semantics): logit_bias -> min_tokens masking -> repetition / presence / frequency penalties
(penalties.py) -> greedy rows take argmax; the other rows: temperature -> top-k -> top-p -> min-p -> sample.
Every stage is batched over rows with per-row parameter tensors and skipped when no row needs it.

Two choices here come from measurements on the CPU target (2 cores, [64, 49152] float32 logits):

* Sampling draws ONE uniform per row and inverts the row's CDF (~0.2 ms), instead of the Gumbel / exponential
  trick `argmax(probs / q)`, whose V exponential draws per row cost ~60 ms per step on CPU. The distribution is
  the same. The CDF is taken in two levels (256-token block sums, then within the chosen block), in float64
  with a float64 uniform, so every token keeps its probability to ~1e-7 relative, tail tokens included, and no
  [B, V] float64 tensor is ever built. A seeded row draws its uniform from its own generator, so its tokens do
  not depend on what else is in the batch or at which row it sits.
* Probabilities stay unnormalised (`exp(logits / T - max)`, computed in place): inverse CDF, min-p (a ratio to
  the max) and top-p (a fraction of the row's mass) are all scale-free, so the softmax division is skipped.
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
from plait.sampling.penalties import (PenaltyState, apply_logit_bias, apply_min_tokens, apply_penalties,
                                     apply_penalties_incremental, needs_processing)
from plait.sampling.structured import AllowedTokens, apply_allowed

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
    allowed: AllowedTokens | None = None  # structured output: grammar masks of the constrained rows
    # Incremental penalty bookkeeping per row (the runner keeps one per request that uses penalties); without it
    # penalties are computed from the token lists above.
    penalty_states: list[PenaltyState | None] | None = None


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one sampled id per row
    # Per row: None if params.logprobs is None, else [(chosen_id, logprob, rank)] followed by the
    # top-`params.logprobs` alternatives as (id, logprob, rank); logprobs of the RAW logits (grammar-masked for
    # structured rows), rank 1 = most likely.
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
        if batch.allowed is not None:  # grammar masks come first: everything after, logprobs too, sees them
            logits = apply_allowed(logits, batch.allowed)

        if needs_processing(params, [len(o) for o in batch.output_token_ids]):
            # Work on an owned contiguous copy: the caller's logits stay raw (logprobs, speculative decoding).
            x = torch.empty((num_rows, vocab), dtype=torch.float32, device=device).copy_(logits)
            owned = True
            apply_logit_bias(x, params)
            apply_min_tokens(x, params, batch.output_token_ids, batch.eos_token_ids)
            if any(p.uses_penalties for p in params):
                if batch.penalty_states is not None:
                    apply_penalties_incremental(x, params, batch.penalty_states)
                else:
                    apply_penalties(x, params, batch.output_token_ids, batch.prompt_token_ids)
        else:
            x = logits.float()  # no copy when already float32: then nothing may write into x
            owned = x is not logits

        greedy_rows = [i for i, p in enumerate(params) if p.temperature < GREEDY_EPS]
        sample_rows = [i for i, p in enumerate(params) if p.temperature >= GREEDY_EPS]
        if not sample_rows:
            tokens = x.argmax(dim=-1)
        elif not greedy_rows:
            tokens = self._sample(x, params, batch.generators, owned)
        else:
            tokens = torch.empty(num_rows, dtype=torch.long, device=device)
            g_idx = torch.tensor(greedy_rows, device=device)
            s_idx = torch.tensor(sample_rows, device=device)
            tokens[g_idx] = x[g_idx].argmax(dim=-1)
            tokens[s_idx] = self._sample(x[s_idx], [params[i] for i in sample_rows],
                                         [batch.generators[i] for i in sample_rows], owned=True)

        token_ids = tokens.tolist()
        return SamplerOutput(token_ids=token_ids, logprobs=self._logprobs(logits, tokens, params))

    # ----------------------------------------------------------------------------------------- sampling

    def _sample(self, x: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                owned: bool) -> torch.Tensor:
        """Sample one token per row of processed logits `x` (no greedy rows here); `owned`: x may be overwritten."""
        n, vocab = x.shape
        device = x.device
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
        probs = x.div_(temperature[:, None]) if owned else x / temperature[:, None]
        probs = probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()  # unnormalised: the row max is 1
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
        self._sample_truncated(probs, torch.tensor(truncated, device=device), top_k_t, top_p_t, min_p_t, uniform,
                               out=tokens)
        return tokens

    def _sample_truncated(self, probs: torch.Tensor, pending: torch.Tensor, top_k: torch.Tensor,
                          top_p: torch.Tensor, min_p: torch.Tensor | None, uniform: torch.Tensor,
                          out: torch.Tensor) -> None:
        """Sample rows `pending` (top-k / top-p rows) into `out`, trying growing candidate sets (see module doc).

        Parameter tensors are per row of `probs`; top_k holds vocab where top-k is disabled.
        """
        n, vocab = probs.shape
        sizes = [s for s in self.candidate_sizes if s < vocab] if probs.device.type == "cpu" else []
        row_total = probs.sum(dim=-1).double() if sizes else None
        # Lower bound on each row's kept-set size, learnt at each level: rows skip sizes that cannot hold it.
        need = torch.zeros(n, dtype=torch.float64, device=probs.device)
        for size in sizes + [vocab]:
            now = pending[need[pending] <= size] if size < vocab else pending
            if now.numel() == 0:
                continue
            rows = probs if now.numel() == n else probs[now]
            vals, ids = rows.topk(size, dim=-1) if size < vocab else rows.sort(dim=-1, descending=True)
            got, need[now] = _sample_sorted(vals, ids, top_k[now], top_p[now],
                                            None if min_p is None else min_p[now], uniform[now],
                                            row_total[now] if size < vocab else None, vocab)
            if size == vocab:  # a full sort always fits
                out[now] = got
                return
            done = need[now] <= size
            out[now[done]] = got[done]
            pending = pending[need[pending] > size]
            if pending.numel() == 0:
                return

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


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Column index per row drawn with probability weights / row sum (weights >= 0, any scale, not modified).

    Two levels so that no [rows, V] float64 cumsum is built: float64 cumsum of the block sums picks a block, a
    float64 cumsum inside that block picks the token. Each block sum is a short float32 sum (relative error
    ~1e-7), so every token keeps its probability to ~1e-7 relative. Zero-weight entries are never chosen.
    """
    n, vocab = weights.shape
    if vocab <= 4 * block:
        return _search(weights.cumsum(dim=-1, dtype=torch.float64), uniform, None)
    pad = -vocab % block
    blocks = torch.nn.functional.pad(weights, (0, pad)).view(n, -1, block) if pad else weights.view(n, -1, block)
    block_cdf = blocks.sum(dim=-1).cumsum(dim=-1, dtype=torch.float64)
    target = uniform * block_cdf[:, -1]
    b = _search(block_cdf, uniform, None)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    inner = blocks.gather(1, b[:, None, None].expand(n, 1, block))[:, 0]
    inner_cdf = inner.cumsum(dim=-1, dtype=torch.float64)
    # Rounding between the block sum and the inner cumsum could push the target just outside the block: keep it
    # in [0, inner total) so the pick is always a positive-weight token of this block.
    inner_u = ((target - before) / inner_cdf[:, -1]).clamp(min=0.0, max=_MAX_UNIFORM)
    return b * block + _search(inner_cdf, inner_u, None)


def _search(cdf: torch.Tensor, uniform: torch.Tensor, limit: torch.Tensor | None) -> torch.Tensor:
    """Per row, the first index whose cdf value exceeds u * cdf[limit - 1] (limit: a prefix length, default
    the whole row). Zero-width entries are never returned."""
    last = cdf[:, -1] if limit is None else cdf.gather(1, (limit - 1)[:, None])[:, 0]
    pick = torch.searchsorted(cdf, (uniform * last)[:, None], right=True)[:, 0]
    return pick.clamp_(max=cdf.shape[1] - 1) if limit is None else torch.minimum(pick, limit - 1)


def _sample_unsorted(probs: torch.Tensor, uniform: torch.Tensor, min_p: torch.Tensor | None) -> torch.Tensor:
    """Rows without top-k / top-p: sample straight from the vocabulary order, no sort needed. Overwrites probs."""
    if min_p is not None:
        probs.masked_fill_(probs < min_p[:, None] * probs.amax(dim=-1, keepdim=True), 0.0)
    return _inverse_cdf(probs, uniform)


def _sample_sorted(vals: torch.Tensor, ids: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                   min_p: torch.Tensor | None, uniform: torch.Tensor, row_total: torch.Tensor | None,
                   vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply top-k, top-p, min-p to the `K` most likely tokens of each row and sample.

    `vals` are probabilities sorted descending with their token `ids`; `row_total` is each row's whole
    probability mass (None when K == vocab, i.e. a full sort). In descending order every filter keeps a prefix,
    so the kept set is the first `n_keep` candidates, found by counting on one float64 cumsum: no [rows, K]
    masks.

    Returns (tokens, need). need <= K: the row's kept set lies inside the candidates and its token is exact.
    need > K: the token is invalid and `need` is a lower bound on the kept-set size, to retry with a larger K.
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
    p_mass = top_p * total
    below = torch.searchsorted(cum, p_mass[:, None], right=False)[:, 0]
    n_keep = torch.minimum(n_keep, (below + 1).clamp(max=size))
    if min_p is not None:
        n_min_p = (vals >= (min_p * vals[:, 0])[:, None]).sum(dim=-1)
        n_keep = torch.minimum(n_keep, n_min_p)
    tokens = ids.gather(1, _search(cum, uniform, n_keep)[:, None])[:, 0]  # inverse CDF inside the prefix
    if row_total is None:
        return tokens, n_keep.double()
    # The kept set is inside the candidates when top-k is within them, or top-k is off and the candidates hold
    # top_p of the mass, or min-p already cut inside them (when top-p's total is known).
    fits = k_fits | ((top_k >= vocab) & (cum[:, -1] >= p_mass))
    if min_p is not None:
        fits |= (n_min_p < size) & ((top_k >= vocab) | (top_p >= 1.0))
    # A row that does not fit needs at least one more candidate. With top-k off and no min-p, every missing
    # token has probability <= vals[-1], so it needs at least (p_mass - cum[-1]) / vals[-1] more.
    bounded = top_k >= vocab if min_p is None else (top_k >= vocab) & (min_p == 0)
    bound = ((p_mass - cum[:, -1]) / vals[:, -1].double().clamp(min=1e-30)).ceil().clamp(min=1.0)
    more = torch.where(bounded, bound, 1.0)
    return tokens, torch.where(fits, n_keep.double(), size + more)
