"""The drafters and the draft-length rule, pure Python."""

from __future__ import annotations

import pytest

from plait.core.request import Request, Status
from plait.params import SamplingParams
from plait.spec.config import SpeculativeConfig
from plait.spec.cost_model import StepCostModel
from plait.spec.ngram import NgramIndex
from plait.spec.speculator import Speculator
from plait.spec.suffix import SuffixFamily
from plait.spec.tokens import TokenView


def test_ngram_proposes_what_followed_the_longest_latest_match():
    index = NgramIndex(1, 3)
    out: list[int] = []
    view = TokenView([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3], out)
    assert index.propose(view, 2) == [4, 5]  # the longest tail, [1, 2, 3], occurred before 4 5
    out.append(6)  # no earlier 6
    assert index.propose(view, 4) == []
    out.extend([2, 3])  # tail [6, 2, 3] unseen; [2, 3] was seen before 4, 7 and 6: the latest with k tokens
    assert index.propose(view, 4) == [7, 8, 1, 2]  # after it wins


def test_ngram_uses_an_earlier_occurrence_when_the_latest_is_too_close_to_the_end():
    view = TokenView([1, 2, 8, 9, 6, 1, 2, 1, 2], [])  # [1, 2] last seen just before the tail: 1 token follows
    assert NgramIndex(1, 3).propose(view, 3) == [8, 9, 6]


def test_ngram_index_is_incremental_and_never_matches_the_tail_itself():
    index = NgramIndex(2, 2)
    out: list[int] = []
    view = TokenView([1, 2], out)
    assert index.propose(view, 3) == []
    out.extend([3, 1, 2])
    assert index.propose(view, 3) == [3, 1, 2]


def test_suffix_drafts_from_a_sibling_and_follows_the_majority():
    family = SuffixFamily([10, 11, 12])
    a, b, c = [20, 21, 22, 23, 24], [20, 21, 22, 23, 25], [20, 21]
    for name, out in (("a", a), ("b", b), ("c", c)):
        family.add_member(name, out)
    family.sync()
    # c's tail [.., 20, 21] matched in a and b: both continue 22 23, then disagree (24 vs 25: a 50% share)
    assert family.propose("c", 4, max_match=8, min_match=1, min_share=0.6) == [22, 23]
    assert family.propose("c", 4, max_match=8, min_match=1, min_share=0.5) == [22, 23, 24]
    family.remove_member("a")
    family.remove_member("b")
    assert family.propose("c", 4, max_match=8, min_match=1, min_share=0.5) == []


def test_cost_model_uses_measured_sizes_and_extrapolates_with_a_line():
    model = StepCostModel()
    assert model.step_time(4) is None
    for tokens in (1, 4, 16, 64, 128) * 3:
        model.observe(tokens, 0.030 + 0.001 * tokens)  # 30 ms of weights + 1 ms a token
    a, b = model.fit()
    assert a == pytest.approx(0.030, rel=1e-6) and b == pytest.approx(0.001, rel=1e-6)
    assert model.step_time(16) == pytest.approx(0.046)
    assert model.step_time(10) == pytest.approx(0.040)  # between measured sizes
    assert model.step_time(200) == pytest.approx(0.230)  # beyond: the line
    model.observe(17, 0.200)  # a cliff (another matmul path above 16 rows) is learnt as measured
    assert model.step_time(17) == pytest.approx(0.200)
    assert model.step_time(40) > model.step_time(16) * 3


def request(rid: str, prompt: list[int], output: list[int], max_tokens: int = 100, **params) -> Request:
    r = Request(rid, prompt, SamplingParams(max_tokens=max_tokens, **params), max_tokens, frozenset())
    r.output_token_ids = list(output)
    r.num_computed = len(prompt) + len(output) - 1
    r.status = Status.RUNNING
    return r


def test_speculator_limits_drafts_to_max_tokens_and_skips_ineligible_requests():
    spec = Speculator(SpeculativeConfig(method="ngram", num_speculative_tokens=4, adaptive=False), 1000)
    loop = [1, 2, 3] * 4
    near_end = request("a", loop, [1], max_tokens=3)  # room for 1 draft + the sampled token
    penalised = request("b", loop, [1], repetition_penalty=1.2)
    opted_out = request("c", loop, [1], speculative=False)
    plain = request("d", loop, [1])
    spec.propose([near_end, penalised, opted_out, plain])
    assert near_end.spec_token_ids == [2]
    assert penalised.spec_token_ids == [] and opted_out.spec_token_ids == []
    assert plain.spec_token_ids == [2, 3, 1, 2]


def test_adaptive_draft_length_follows_acceptance_and_batch_cost():
    spec = Speculator(SpeculativeConfig(method="ngram", num_speculative_tokens=4), 1000)
    for tokens in list(range(1, 9)) + [16, 32, 64, 65, 80, 128, 256]:
        spec.observe_step(tokens, 0.030 + 0.002 * tokens)  # 30 ms of weights + 2 ms a token
    loop = [1, 2, 3] * 4
    alone = request("a", loop, [1])
    spec.propose([alone])
    assert len(alone.spec_token_ids) == 4  # batch 1: 4 tokens at alpha 0.6 bring 1.3 tokens for 8 ms more
    for _ in range(10):
        spec.observe("a", 4, 0)  # always rejected
    spec.propose([alone])
    assert len(alone.spec_token_ids) < 4
    crowd = [request(f"r{i}", loop, [1]) for i in range(64)]
    spec.propose(crowd)
    assert all(r.spec_token_ids == [] for r in crowd)  # at 64 decodes a draft token costs more than it gains
    limited = Speculator(SpeculativeConfig(method="ngram", disable_by_batch_size=2, adaptive=False), 1000)
    three = [request(f"r{i}", loop, [1]) for i in range(3)]
    limited.propose(three)
    assert all(r.spec_token_ids == [] for r in three)


def test_planner_drafts_nothing_it_cannot_price():
    spec = Speculator(SpeculativeConfig(method="ngram", num_speculative_tokens=4), 1000)
    spec.observe_step(1, 0.05)  # one size measured, no line yet: larger steps cannot be priced
    alone = request("a", [1, 2, 3] * 4, [1])
    spec.propose([alone])
    assert alone.spec_token_ids == []
