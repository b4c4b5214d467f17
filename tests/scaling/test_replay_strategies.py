"""Strategies on stored samples (replay): stopping points and allocations computed by hand."""

import asyncio

import pytest

from plait.scaling import (AdaptiveConsistency, BestOfN, BlendASC, EarlyStoppingConsistency, ReplaySampler,
                           SelfConsistency, parse_strategy)
from plait.scaling.result import Sample
from plait.scaling.spec import build_strategy


def stored(*answers):
    return [Sample(index=i, text=f"#{i} {a}", answer=a, num_tokens=10 + i, mean_logprob=-1.0 - 0.01 * i)
            for i, a in enumerate(answers)]


def run(strategy, samples):
    return asyncio.run(strategy.run(ReplaySampler({"q": samples}).open("q")))


def test_self_consistency_counts_votes():
    r = run(SelfConsistency(n=5), stored("1", "2", "2", None, "1", "2"))
    assert r.answer == "1" and r.votes == {"1": 2.0, "2": 2.0}  # tie: the earlier answer
    assert r.samples_used == r.samples_launched == 5
    assert r.generated_tokens == 10 + 11 + 12 + 13 + 14
    assert r.text == "#0 1"


def test_asc_stops_after_four_unanimous():
    r = run(AdaptiveConsistency(max_samples=40), stored(*["5"] * 40))
    assert r.samples_used == 4 and r.stopped_early and r.answer == "5"  # 3-0: 15/16 < 0.95; 4-0: 31/32


def test_asc_hand_computed_mixed_run():
    # after 6: "5"x5, "3"x1 -> P(Bin(7,1/2) <= 5) = 120/128 = 0.9375: go on; after 7: 6-1 -> 247/256 = 0.965: stop
    r = run(AdaptiveConsistency(max_samples=40), stored("5", "3", "5", "5", "5", "5", "5", "3", "3"))
    assert r.samples_used == 7 and r.answer == "5" and r.votes == {"5": 6.0, "3": 1.0}


def test_asc_never_exceeds_its_budget():
    r = run(AdaptiveConsistency(max_samples=10, batch=3), stored(*["1", "2"] * 20))
    assert r.samples_used == 10 and r.samples_launched == 10 and not r.stopped_early


def test_esc_stops_on_a_unanimous_window():
    r = run(EarlyStoppingConsistency(window=3, max_samples=12), stored("1", "2", "1", "4", "4", "4", "9", "9", "9"))
    assert r.samples_used == 6 and r.stopped_early and r.answer == "4"  # window 1 split, window 2 unanimous
    r = run(EarlyStoppingConsistency(window=3, max_samples=7), stored("1", "2", "1", "4", "5", "4", "9", "9", "9"))
    assert r.samples_used == 7 and r.answer == "1"  # the cap cuts the third window to one sample; 2-2 tie


def test_blend_asc_gives_the_budget_to_the_least_certain():
    # q0 unanimous, q1 alternating. Budget 12, one sample per round. Certainty P(Bin(v1+v2+1, 1/2) <= v1):
    # r1: both 0-0 (1/2), tie -> fewer samples, then order -> q0 (now 1-0: 3/4); r2: q1 (1/2) -> 1-0 (3/4);
    # r3: tie at 3/4 -> q0 -> 2-0 (7/8); r4..r12: q1 goes 1-1 (1/2), 2-1 (11/16), 2-2 (1/2), ... always below 7/8.
    easy, hard = stored(*["3"] * 20), stored(*["1", "2"] * 10)
    sampler = ReplaySampler({"easy": easy, "hard": hard})
    results = asyncio.run(BlendASC(round_size=1).run_many([sampler.open("easy"), sampler.open("hard")], 12))
    used = [r.samples_used for r in results]
    assert sum(used) == 12
    assert used == [2, 10]
    assert results[0].answer == "3" and results[1].answer == "1"


def test_blend_asc_respects_budget_and_caps():
    sampler = ReplaySampler({"a": stored(*["1", "2"] * 3), "b": stored(*["1", "2"] * 3)})
    results = asyncio.run(BlendASC(round_size=4, max_per_question=5).run_many([sampler.open("a"), sampler.open("b")],
                                                                              100))
    assert [r.samples_used for r in results] == [5, 5]


def test_best_of_n_default_picks_the_highest_mean_logprob():
    r = run(BestOfN(n=4), stored("1", "2", "3", "4"))
    assert r.answer == "1" and r.samples[0].score == -1.0


def test_best_of_n_with_a_reward():
    async def reward(question, text):
        assert question == "q"
        return 1.0 if text.endswith("3") else 0.0
    r = asyncio.run(BestOfN(n=4, reward=reward).run(ReplaySampler({"q": stored("1", "2", "3", "4")}).open("q")))
    assert r.answer == "3" and r.text == "#2 3"


def test_parse_and_bad_parameters():
    s = parse_strategy("asc:max=16,threshold=0.9")
    assert isinstance(s, AdaptiveConsistency) and s.max_samples == 16 and s.threshold == 0.9
    assert parse_strategy("esc:w=4").window == 4
    with pytest.raises(ValueError, match="strategy must be one of"):
        parse_strategy("nope:n=3")
    with pytest.raises(ValueError, match="takes the parameters"):
        parse_strategy("sc:m=3")
    with pytest.raises(ValueError, match="max_samples must be an integer >= 1"):
        build_strategy("asc", {"max_samples": 0})
    with pytest.raises(ValueError, match="threshold must be a number in"):
        AdaptiveConsistency(threshold=1.5)


def test_blend_asc_stop_threshold_leaves_settled_questions_alone():
    sampler = ReplaySampler({"a": stored(*["3"] * 20), "b": stored(*["1", "2"] * 10)})
    results = asyncio.run(BlendASC(round_size=2, stop_threshold=0.9).run_many([sampler.open("a"),
                                                                               sampler.open("b")], 12))
    # q0 settles at 3-0 (15/16 >= 0.9) and gets no more; q1 takes the rest of the budget
    assert [r.samples_used for r in results] == [3, 9]
