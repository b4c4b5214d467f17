"""Logits processors that run before temperature: logit bias, min_tokens masking, repetition / presence /
frequency penalties.

All of them touch only the (row, token) pairs they concern, never the whole [B, V] tensor: a step with 64 rows
and 2,000-token histories edits ~100k entries instead of 3M. They work in place on a contiguous float32 tensor
that the sampler owns (a copy of the model's logits), through its flat view, so that one index tensor
`row * V + token` addresses every pair of the batch at once.

Token lists become tensors through numpy (`np.fromiter`), ~8x faster than `torch.tensor(list)` for long
prompts; that conversion is the main per-step cost of penalties.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np
import torch

from plait.params import SamplingParams


def needs_processing(params: Sequence[SamplingParams], output_lens: Sequence[int]) -> bool:
    """True when some row needs one of the processors below (cheap Python check, no tensors)."""
    return any(
        p.logit_bias or p.uses_penalties or n < p.min_tokens for p, n in zip(params, output_lens)
    )


def apply_logit_bias(logits: torch.Tensor, params: Sequence[SamplingParams]) -> None:
    """Add each row's `logit_bias` in place. Token ids outside the vocabulary are ignored (the engine should
    reject them when the request arrives; ignoring them here keeps one bad request from failing a step)."""
    vocab = logits.shape[1]
    flat_ids: list[int] = []
    biases: list[float] = []
    for row, p in enumerate(params):
        if p.logit_bias:
            for tok, bias in p.logit_bias.items():
                if 0 <= tok < vocab:
                    flat_ids.append(row * vocab + tok)
                    biases.append(bias)
    if flat_ids:
        flat = logits.view(-1)
        idx = torch.tensor(flat_ids, dtype=torch.long, device=logits.device)
        flat[idx] += torch.tensor(biases, dtype=logits.dtype, device=logits.device)


def apply_min_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    output_token_ids: Sequence[Sequence[int]],
    eos_token_ids: Sequence[int],
) -> None:
    """While a row has fewer than `min_tokens` outputs, make its stop tokens impossible (-inf): the model's
    eos ids (unless `ignore_eos`, where eos does not stop anyway) and the request's `stop_token_ids`."""
    vocab = logits.shape[1]
    flat_ids: list[int] = []
    for row, p in enumerate(params):
        if len(output_token_ids[row]) < p.min_tokens:
            banned = set(p.stop_token_ids or ())
            if not p.ignore_eos:
                banned.update(eos_token_ids)
            flat_ids.extend(row * vocab + t for t in banned if 0 <= t < vocab)
    if flat_ids:
        idx = torch.tensor(flat_ids, dtype=torch.long, device=logits.device)
        logits.view(-1).index_fill_(0, idx, float("-inf"))


def apply_penalties(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    output_token_ids: Sequence[Sequence[int]],
    prompt_token_ids: Sequence[Sequence[int]],
) -> None:
    """Apply penalties in place, in vLLM's order.

    repetition_penalty (HF / CTRL rule) over tokens seen in prompt OR output: logit > 0 -> logit / p, else
    logit * p. Then presence (subtracted once if the token appears) and frequency (count x penalty) over OUTPUT
    tokens only, as in the OpenAI API.
    """
    vocab = logits.shape[1]
    device = logits.device
    flat = logits.view(-1)

    rep_rows = [r for r, p in enumerate(params) if p.repetition_penalty != 1.0]
    if rep_rows:
        seen = _flat_token_index(
            rep_rows, [chain(prompt_token_ids[r], output_token_ids[r]) for r in rep_rows],
            [len(prompt_token_ids[r]) + len(output_token_ids[r]) for r in rep_rows], vocab, device)
        seen = torch.unique(seen)  # a set: each seen token is penalised once
        penalty = _row_values([params[r].repetition_penalty for r in rep_rows], rep_rows, len(params), device)
        values = flat[seen]
        p = penalty[seen // vocab]
        flat[seen] = torch.where(values > 0, values / p, values * p)

    freq_rows = [r for r, p in enumerate(params)
                 if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0]
    if freq_rows:
        out = _flat_token_index(freq_rows, [output_token_ids[r] for r in freq_rows],
                                [len(output_token_ids[r]) for r in freq_rows], vocab, device)
        if out.numel():
            tokens, counts = torch.unique(out, return_counts=True)
            rows = tokens // vocab
            presence = _row_values([params[r].presence_penalty for r in freq_rows], freq_rows, len(params), device)
            frequency = _row_values([params[r].frequency_penalty for r in freq_rows], freq_rows, len(params),
                                    device)
            flat[tokens] -= frequency[rows] * counts.to(flat.dtype) + presence[rows]


def _flat_token_index(rows: list[int], token_iters: Sequence, lengths: list[int], vocab: int,
                      device: torch.device) -> torch.Tensor:
    """Concatenate the rows' token ids into one tensor of flat indices `row * vocab + token` on `device`,
    dropping ids outside [0, vocab)."""
    total = sum(lengths)
    cols = torch.from_numpy(np.fromiter(chain.from_iterable(token_iters), dtype=np.int64, count=total))
    row_ids = torch.repeat_interleave(torch.tensor(rows, dtype=torch.long), torch.tensor(lengths))
    valid = (cols >= 0) & (cols < vocab)
    if not bool(valid.all()):
        cols, row_ids = cols[valid], row_ids[valid]
    return (row_ids * vocab + cols).to(device)


def _row_values(values: list[float], rows: list[int], num_rows: int, device: torch.device) -> torch.Tensor:
    """A [num_rows] float32 tensor holding `values` at `rows` (zero elsewhere, never read)."""
    out = torch.zeros(num_rows, dtype=torch.float32)
    out[torch.tensor(rows, dtype=torch.long)] = torch.tensor(values, dtype=torch.float32)
    return out.to(device)


class PenaltyState:
    """One request's penalty bookkeeping, kept up to date one token at a time.

    Dense per-vocabulary tensors: a seen-token mask (repetition penalty) and output counts (presence / frequency),
    each updated by one element per token. Applying them is one vectorised pass over the vocabulary per row,
    whatever the length of the sequence or how many distinct tokens it holds, so a step's cost does not grow with
    the generation (index lists rebuilt or converted each step did: O(distinct tokens) per step).
    """

    def __init__(self, prompt_token_ids: Sequence[int], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.seen = torch.zeros(vocab_size, dtype=torch.bool)
        ids = [t for t in prompt_token_ids if 0 <= t < vocab_size]
        if ids:
            self.seen[torch.tensor(ids, dtype=torch.long)] = True
        self.counts = torch.zeros(vocab_size, dtype=torch.float32)  # occurrences in the output

    def add(self, token: int) -> None:
        if not 0 <= token < self.vocab_size:
            return
        self.seen[token] = True
        self.counts[token] += 1.0


def apply_penalties_incremental(logits: torch.Tensor, params: Sequence[SamplingParams],
                                states: Sequence[PenaltyState | None]) -> None:
    """The same penalties as `apply_penalties`, in the same order and bit for bit, from each row's PenaltyState:
    repetition on every seen token, then counts x frequency + presence subtracted from every output token."""
    device = logits.device
    for r, p in enumerate(params):
        if p.repetition_penalty != 1.0:
            row, seen = logits[r], states[r].seen.to(device)
            penalised = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
            row.copy_(torch.where(seen, penalised, row))
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            counts = states[r].counts.to(device)
            # Unseen tokens subtract exactly 0; seen ones subtract counts * frequency + presence, as the sparse
            # form does.
            logits[r] -= counts * p.frequency_penalty + (counts > 0).float() * p.presence_penalty
