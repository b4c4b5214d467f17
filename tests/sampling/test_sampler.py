"""Sampler tests on tiny vocabularies and random logits. Every random draw is seeded, so nothing can flake."""

from __future__ import annotations

import math

import pytest
import torch

from plait.params import SamplingParams
from plait.sampling import Sampler, SamplingBatch
from plait.sampling.penalties import apply_logit_bias, apply_min_tokens, apply_penalties
from plait.sampling.sampler import _inverse_cdf


def make_batch(params: list[SamplingParams], output: list[list[int]] | None = None,
               prompt: list[list[int]] | None = None, eos: list[int] | None = None,
               generators: list[torch.Generator | None] | None = None) -> SamplingBatch:
    n = len(params)
    if generators is None:
        generators = [None if p.seed is None else torch.Generator().manual_seed(p.seed) for p in params]
    return SamplingBatch(params=params, generators=generators, output_token_ids=output or [[] for _ in range(n)],
                         prompt_token_ids=prompt or [[] for _ in range(n)], eos_token_ids=eos or [])


def repeat_rows(logits_row: torch.Tensor, n: int) -> torch.Tensor:
    return logits_row[None, :].expand(n, -1).contiguous()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


# ------------------------------------------------------------------------------------------------ greedy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_is_argmax_of_raw_logits(dtype: torch.dtype) -> None:
    logits = torch.randn(8, 50).to(dtype)
    logits[3, 7] = logits[3, 9] = logits[3].max() + 1  # a tie: lowest index wins, as torch.argmax
    before = logits.clone()
    out = Sampler()(logits, make_batch([SamplingParams(temperature=0)] * 8))
    assert out.token_ids == logits.float().argmax(-1).tolist()
    assert out.token_ids[3] == 7
    assert out.logprobs == [None] * 8
    assert torch.equal(logits, before), "the caller's logits must not be modified"


def test_top_k_1_equals_greedy() -> None:
    logits = torch.randn(16, 100)
    out = Sampler()(logits, make_batch([SamplingParams(temperature=1.3, top_k=1)] * 16))
    assert out.token_ids == logits.argmax(-1).tolist()


def test_mixed_batch_greedy_and_sampled_rows() -> None:
    logits = torch.randn(10, 40)
    params = [SamplingParams(temperature=0) if i % 2 == 0 else SamplingParams(temperature=1.0, top_p=0.9)
              for i in range(10)]
    before = logits.clone()
    out = Sampler()(logits, make_batch(params))
    argmax = logits.argmax(-1).tolist()
    for i in range(0, 10, 2):
        assert out.token_ids[i] == argmax[i]
    assert all(0 <= t < 40 for t in out.token_ids)
    assert torch.equal(logits, before)


# ------------------------------------------------------------------------------------------------ seeds


def _run_steps(sampler: Sampler, rows: list[torch.Tensor], params: list[SamplingParams],
               generators: list[torch.Generator | None], steps: int) -> list[list[int]]:
    """Sample `steps` times from the same logits; returns each row's tokens."""
    logits = torch.stack(rows)
    tokens: list[list[int]] = [[] for _ in rows]
    for _ in range(steps):
        out = sampler(logits, make_batch(params, generators=generators))
        for i, t in enumerate(out.token_ids):
            tokens[i].append(t)
    return tokens


@pytest.mark.parametrize("kwargs", [
    dict(temperature=1.0),
    dict(temperature=0.8, top_p=0.95),
    dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.01),
    dict(temperature=1.0, min_p=0.05),
])
def test_seeded_tokens_do_not_depend_on_the_batch(kwargs: dict) -> None:
    vocab = 3000
    mine = torch.randn(vocab) * 2
    params = SamplingParams(seed=42, **kwargs)
    alone = _run_steps(Sampler(), [mine], [params], [torch.Generator().manual_seed(42)], steps=12)[0]
    assert len(set(alone)) > 1, "the test needs real randomness to mean anything"

    others = [torch.randn(vocab) for _ in range(4)]
    batch_params = [SamplingParams(temperature=0.9), SamplingParams(temperature=1.0, top_k=5, seed=7),
                    SamplingParams(temperature=0), params, SamplingParams(temperature=1.2, top_p=0.5)]
    gens = [None, torch.Generator().manual_seed(7), None, torch.Generator().manual_seed(42), None]
    rows = others[:3] + [mine] + others[3:]
    in_batch = _run_steps(Sampler(), rows, batch_params, gens, steps=12)[3]
    assert in_batch == alone


def test_same_seed_same_tokens_and_different_seed_differs() -> None:
    logits = torch.randn(1, 500)
    runs = [_run_steps(Sampler(), [logits[0]], [SamplingParams(seed=s)], [torch.Generator().manual_seed(s)], 20)[0]
            for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_candidate_levels_match_full_sort() -> None:
    """The topk-candidate shortcut (CPU) must give exactly the tokens of the full-sort path."""
    vocab = 4000
    # Peaked rows (nucleus fits in 64), medium (fits in 1024), flat (needs the full sort), and top-k > 64.
    # Flat rows where min-p cuts inside the candidates, with top-p on or top-k beyond the candidates.
    scales = [8.0, 3.0, 0.3, 1.0, 5.0, 0.5, 0.3, 0.3]
    rows = [torch.randn(vocab) * s for s in scales]
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=i) for i in range(4)]
    params += [SamplingParams(temperature=0.9, top_k=300, top_p=0.99, seed=4),
               SamplingParams(temperature=1.0, top_k=2000, seed=5),
               SamplingParams(temperature=0.5, top_p=0.95, min_p=0.6, seed=6),
               SamplingParams(temperature=0.5, top_k=3000, min_p=0.6, seed=7)]
    full = Sampler()
    full.candidate_sizes = ()
    fast = _run_steps(Sampler(), rows, params, [torch.Generator().manual_seed(i) for i in range(8)], 15)
    slow = _run_steps(full, rows, params, [torch.Generator().manual_seed(i) for i in range(8)], 15)
    assert fast == slow
    assert all(len(set(tokens)) > 1 for tokens in fast[1:])


# ------------------------------------------------------------------------------------------------ truncation

PROBS = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])


def _draw(params: SamplingParams, logits_row: torch.Tensor, n: int) -> torch.Tensor:
    out = Sampler()(repeat_rows(logits_row, n), make_batch([params] * n))
    return torch.tensor(out.token_ids)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    # 0.5 < 0.75 <= 0.5 + 0.3: the nucleus is {0, 1}.
    draws = _draw(SamplingParams(temperature=1.0, top_p=0.75), PROBS.log(), 4000)
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.04
    # top_p below the top token's probability still keeps one token.
    assert set(_draw(SamplingParams(temperature=1.0, top_p=0.2), PROBS.log(), 200).tolist()) == {0}


@pytest.mark.parametrize("scale", [4.0, 0.2])  # nucleus inside the first candidate set / needs the full sort
def test_top_p_never_leaves_the_nucleus_on_a_large_vocab(scale: float) -> None:
    vocab, top_p = 5000, 0.6
    row = torch.randn(vocab) * scale
    probs = row.softmax(-1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    nucleus = set(order[before < top_p].tolist())
    draws = set(_draw(SamplingParams(temperature=1.0, top_p=top_p), row, 300).tolist())
    assert draws <= nucleus
    assert len(draws) > 1


def test_top_k_then_top_p_renormalised() -> None:
    # top_k=3 keeps {0,1,2} with mass 0.9; top_p=0.6 of that is 0.54 > 0.5, so the nucleus is {0, 1}.
    draws = _draw(SamplingParams(temperature=1.0, top_k=3, top_p=0.6), PROBS.log(), 2000)
    assert set(draws.tolist()) == {0, 1}
    draws = _draw(SamplingParams(temperature=1.0, top_k=3), PROBS.log(), 2000)
    assert set(draws.tolist()) == {0, 1, 2}


def test_min_p_drops_unlikely_tokens() -> None:
    # threshold 0.15 * 0.5 = 0.075: tokens 3 (0.06) and 4 (0.04) go.
    draws = _draw(SamplingParams(temperature=1.0, min_p=0.15), PROBS.log(), 3000)
    assert set(draws.tolist()) == {0, 1, 2}
    with_top_p = _draw(SamplingParams(temperature=1.0, min_p=0.15, top_p=0.99), PROBS.log(), 3000)
    assert set(with_top_p.tolist()) == {0, 1, 2}


def test_temperature_distribution_chi_square() -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    n = 20000
    for temperature in (0.5, 1.0, 2.0):
        expected = (logits / temperature).softmax(-1) * n
        draws = _draw(SamplingParams(temperature=temperature), logits, n)
        observed = torch.bincount(draws, minlength=4).float()
        chi2 = ((observed - expected) ** 2 / expected).sum().item()
        assert chi2 < 25.0, (temperature, observed, expected)  # 3 dof: p(chi2 > 25) ~ 1.5e-5


@pytest.mark.parametrize("vocab", [3000, 4096, 700])  # padded last block, whole blocks, single level
def test_inverse_cdf_distribution_and_zero_weights(vocab: int) -> None:
    # A few positive tokens scattered over blocks (block edges, last token), everything else exactly zero.
    support = torch.tensor([0, 255, 256, 511, 690, vocab - 1])
    p = torch.tensor([0.05, 0.3, 0.15, 0.2, 0.1, 0.2])
    weights = torch.zeros(vocab)
    weights[support] = p * 7.0  # any scale
    n = 20000
    picks = _inverse_cdf(repeat_rows(weights, n), torch.rand(n, dtype=torch.float64).clamp(max=1 - 1e-12))
    assert set(picks.tolist()) <= set(support.tolist())
    observed = torch.stack([(picks == s).sum() for s in support]).float()
    chi2 = ((observed - p * n) ** 2 / (p * n)).sum().item()
    assert chi2 < 35.0, observed  # 5 dof: p(chi2 > 35) ~ 1.5e-6
    # The extreme uniforms pick the first and the last positive token.
    edges = _inverse_cdf(repeat_rows(weights, 2), torch.tensor([0.0, 1 - 1e-12], dtype=torch.float64))
    assert edges.tolist() == [0, vocab - 1]


def test_seeded_rows_have_the_right_distribution_too() -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    n = 4000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    out = Sampler()(repeat_rows(logits, n), make_batch([SamplingParams(seed=i) for i in range(n)], generators=gens))
    observed = torch.bincount(torch.tensor(out.token_ids), minlength=4).float()
    expected = logits.softmax(-1) * n
    assert ((observed - expected) ** 2 / expected).sum().item() < 25.0


# ------------------------------------------------------------------------------------------------ processors


def test_repetition_penalty_hand_computed() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    apply_penalties(logits, [SamplingParams(repetition_penalty=2.0)], [[1, 3, 3]], [[0]])
    # seen = {0 (prompt), 1, 3}: positive / 2, negative * 2; 2 and 4 untouched.
    assert torch.allclose(logits, torch.tensor([[1.0, -2.0, 0.5, 1.5, -2.0]]))


def test_presence_and_frequency_penalties_hand_computed() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)]
    apply_penalties(logits, params, [[1, 3, 3]], [[0, 2]])
    # output only: token 1 once: -1 - 0.5 - 0.25; token 3 twice: 3 - 0.5 - 2 * 0.25; prompt tokens untouched.
    assert torch.allclose(logits, torch.tensor([[2.0, -1.75, 0.5, 2.0, -2.0]]))


def test_all_penalties_together_per_row() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]] * 3)
    params = [SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0), SamplingParams(),
              SamplingParams(presence_penalty=-1.0)]
    apply_penalties(logits, params, [[3, 3], [0, 1, 2], [4, 99999]], [[1], [3], [0]])
    expected = torch.tensor([[2.0, -2.0, 0.5, 1.5 - 2.0, -2.0],  # rep on {1, 3}, then freq on 3 (count 2)
                             [2.0, -1.0, 0.5, 3.0, -2.0],  # no penalties: untouched
                             [2.0, -1.0, 0.5, 3.0, -1.0]])  # negative presence rewards 4; 99999 ignored
    assert torch.allclose(logits, expected)


def test_penalties_change_greedy_choice_end_to_end() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.9, 1.0]])
    batch = make_batch([SamplingParams(temperature=0, frequency_penalty=0.2)], output=[[1]])
    assert Sampler()(logits, batch).token_ids == [2]
    batch = make_batch([SamplingParams(temperature=0, repetition_penalty=1.2)], prompt=[[1]])
    assert Sampler()(logits, batch).token_ids == [2]
    assert logits[0, 1] == 3.0


def test_logit_bias_forces_and_forbids_tokens() -> None:
    logits = torch.randn(6, 30)
    params = [SamplingParams(temperature=0, logit_bias={17: 100.0}),
              SamplingParams(temperature=1.5, logit_bias={4: 100.0, 40_000: 5.0}),  # out of vocab: ignored
              SamplingParams(temperature=0, logit_bias={int(logits[2].argmax()): -100.0}),
              SamplingParams(temperature=0)] * 1 + [SamplingParams(temperature=1.0, top_p=0.5,
                                                                   logit_bias={9: 100.0})] * 2
    out = Sampler()(logits, make_batch(params))
    assert out.token_ids[0] == 17
    assert out.token_ids[1] == 4
    assert out.token_ids[2] == logits[2].topk(2).indices[1].item()
    assert out.token_ids[3] == logits[3].argmax().item()
    assert out.token_ids[4:] == [9, 9]
    t = torch.zeros(1, 5)
    apply_logit_bias(t, [SamplingParams(logit_bias={1: 2.5, 3: -1.0})])
    assert t.tolist() == [[0.0, 2.5, 0.0, -1.0, 0.0]]


def test_min_tokens_masks_eos_and_stop_token_ids() -> None:
    eos, stop = 3, 5
    logits = torch.zeros(1, 8)
    logits[0, eos], logits[0, stop], logits[0, 6] = 10.0, 9.0, 1.0
    p = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[stop])
    sampler = Sampler()
    assert sampler(logits, make_batch([p], output=[[1]], eos=[eos])).token_ids == [6]
    assert sampler(logits, make_batch([p], output=[[1, 1]], eos=[eos])).token_ids == [eos]  # min reached
    ignore = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[stop], ignore_eos=True)
    assert sampler(logits, make_batch([ignore], output=[[]], eos=[eos])).token_ids == [eos]
    logits[0, eos] = 0.0
    assert sampler(logits, make_batch([ignore], output=[[]], eos=[eos])).token_ids == [6]  # stop id still masked
    # Sampled rows never draw a masked token.
    flat = torch.zeros(500, 8)
    sampled = SamplingParams(temperature=1.0, min_tokens=1, stop_token_ids=[stop])
    out = sampler(flat, make_batch([sampled] * 500, eos=[eos, 7]))
    assert not {eos, stop, 7} & set(out.token_ids)
    t = torch.zeros(2, 8)
    apply_min_tokens(t, [sampled, SamplingParams()], [[], []], [eos])
    assert torch.isinf(t[0, [eos, stop]]).all() and torch.isfinite(t[1]).all()


# ------------------------------------------------------------------------------------------------ logprobs


def test_logprobs_are_of_the_raw_logits() -> None:
    logits = torch.randn(5, 64)
    params = [SamplingParams(temperature=0.7, top_k=10, logprobs=3, repetition_penalty=1.5),
              SamplingParams(temperature=0, logprobs=0),
              SamplingParams(temperature=1.0),
              SamplingParams(temperature=0, logprobs=5, logit_bias={0: 50.0}),
              SamplingParams(temperature=1.0, logprobs=20)]
    out = Sampler()(logits, make_batch(params, prompt=[[1, 2, 3]] * 5))
    raw = logits.log_softmax(-1)
    assert out.logprobs[2] is None
    for row, p in enumerate(params):
        if p.logprobs is None:
            continue
        entries = out.logprobs[row]
        assert len(entries) == 1 + p.logprobs
        chosen, lp, rank = entries[0]
        assert chosen == out.token_ids[row]
        assert lp == pytest.approx(raw[row, chosen].item(), abs=1e-5)
        assert rank == int((raw[row] > raw[row, chosen]).sum()) + 1
        top = entries[1:]
        expected = raw[row].topk(p.logprobs)
        assert [t for t, _, _ in top] == expected.indices.tolist()
        assert [lp for _, lp, _ in top] == pytest.approx(expected.values.tolist(), abs=1e-5)
        assert [r for _, _, r in top] == list(range(1, p.logprobs + 1))
        assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    assert out.logprobs[1][0][2] == 1  # greedy pick is the most likely token
    assert out.token_ids[3] == 0 and out.logprobs[3][0][2] == int((raw[3] > raw[3, 0]).sum()) + 1


def test_top_logprobs_for_prompt_positions_in_chunks() -> None:
    prompt = torch.randint(0, 50, (12,))
    logits = torch.randn(12, 50)
    whole = Sampler.top_logprobs(logits[:-1], prompt[1:], k=4)
    chunked = Sampler.top_logprobs(logits[:-1], prompt[1:], k=4, chunk_rows=3)
    assert torch.equal(whole.logprobs, chunked.logprobs) and torch.equal(whole.top_ids, chunked.top_ids)
    raw = logits[:-1].log_softmax(-1)
    assert torch.allclose(whole.logprobs, raw.gather(1, prompt[1:, None])[:, 0])
    rows = whole.to_lists([0, 2] + [4] * 9)
    assert len(rows) == 11 and len(rows[0]) == 1 and len(rows[1]) == 3 and len(rows[2]) == 5
    assert rows[0][0][0] == prompt[1].item()
    assert math.isclose(rows[1][1][1], raw[1].max().item(), abs_tol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_logits_with_cpu_generators_match_cpu() -> None:
    logits = torch.randn(4, 1000)
    params = [SamplingParams(seed=i, top_p=0.9) for i in range(3)] + [SamplingParams(temperature=0, logprobs=2)]
    cpu = Sampler()(logits, make_batch(params))
    gpu = Sampler()(logits.cuda(), make_batch(params))
    assert gpu.token_ids == cpu.token_ids


def test_incremental_penalties_equal_the_rebuilt_ones():
    """PenaltyState, fed one token at a time, gives exactly the logits of the from-scratch computation."""
    from plait.sampling.penalties import PenaltyState, apply_penalties_incremental

    g = torch.Generator().manual_seed(0)
    vocab = 50
    params = [SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25),
              SamplingParams(repetition_penalty=0.8), SamplingParams(frequency_penalty=-0.5),
              SamplingParams()]
    prompts = [[1, 2, 2, 7], [3], [4, 4], [5]]
    outputs = [[], [], [], []]
    states = [PenaltyState(p, vocab) for p in prompts]
    for _ in range(30):
        logits = torch.randn(4, vocab, generator=g)
        a, b = logits.clone(), logits.clone()
        apply_penalties(a, params, outputs, prompts)
        apply_penalties_incremental(b, params, states)
        assert torch.equal(a, b)
        for row in range(4):
            token = int(torch.randint(0, vocab, (1,), generator=g))
            outputs[row].append(token)
            states[row].add(token)
