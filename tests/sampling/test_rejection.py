"""The rejection rule keeps sampling exact: whatever the draft, each emitted token is distributed as the target's
filtered distribution p (chi-square on a tiny vocabulary), and a seeded request is reproducible."""

from __future__ import annotations

import torch

from plait.params import SamplingParams
from plait.sampling import Sampler
from plait.sampling.rejection import accepted_greedy, filtered_weights, verify_sampled

LOGITS = torch.tensor([2.0, 1.5, 0.3, -0.5, 1.0, -2.0])
# chi-square critical value, 5 degrees of freedom, p = 0.001: a correct sampler fails about 1 run in 1000.
CHI2_DF5_P001 = 20.52


def chi_square(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs) if p > 0)


def first_token_counts(params: SamplingParams, drafts: list[int], rows: torch.Tensor, trials: int) -> list[int]:
    torch.manual_seed(0)
    sampler = Sampler()
    counts = [0] * rows.shape[1]
    for _ in range(trials):
        tokens = verify_sampled(sampler, rows, drafts, params, None, [], [1], [])
        counts[tokens[0]] += 1
    return counts


def target(params: SamplingParams) -> list[float]:
    w = filtered_weights(LOGITS[None, :], params)[0].double()
    return (w / w.sum()).tolist()


def test_first_token_follows_p_for_any_draft():
    params = SamplingParams(temperature=0.8)
    p = target(params)
    for draft in (0, 3, 5):  # likely, unlikely and very unlikely drafts
        rows = LOGITS.repeat(2, 1)
        counts = first_token_counts(params, [draft], rows, 4000)
        assert chi_square(counts, p) < CHI2_DF5_P001, (draft, counts, p)


def test_filters_apply_before_acceptance():
    params = SamplingParams(temperature=1.0, top_k=3, top_p=0.9)
    p = target(params)
    assert sum(1 for x in p if x > 0) <= 3
    counts = first_token_counts(params, [2], LOGITS.repeat(2, 1), 4000)
    assert all(c == 0 for c, q in zip(counts, p) if q == 0)  # a draft outside the kept set is never emitted
    assert chi_square(counts, p) < CHI2_DF5_P001


def test_bonus_token_after_accepted_drafts_follows_its_row():
    # Row 0 puts almost all mass on token 4 (the draft), so it is accepted; the bonus comes from row 1.
    rows = torch.stack([torch.tensor([-9.0, -9.0, -9.0, -9.0, 9.0, -9.0]), LOGITS])
    params = SamplingParams(temperature=1.0)
    torch.manual_seed(1)
    sampler = Sampler()
    counts = [0] * 6
    for _ in range(4000):
        tokens = verify_sampled(sampler, rows, [4], params, None, [], [1], [])
        if len(tokens) == 2:
            counts[tokens[1]] += 1
    assert sum(counts) > 3900
    assert chi_square(counts, target(params)) < CHI2_DF5_P001


def test_seeded_verification_is_reproducible():
    params = SamplingParams(temperature=1.0, seed=7)
    rows = LOGITS.repeat(4, 1)

    def run() -> list[list[int]]:
        g = torch.Generator().manual_seed(7)
        return [verify_sampled(Sampler(), rows, [0, 1, 4], params, g, [], [1], []) for _ in range(20)]

    assert run() == run()


def test_greedy_acceptance_is_the_leading_matching_run():
    assert accepted_greedy([5, 6, 7, 8], [5, 6, 9]) == 2
    assert accepted_greedy([5, 6, 7, 8], [1, 6, 7]) == 0
    assert accepted_greedy([5, 6, 7, 8], [5, 6, 7]) == 3
