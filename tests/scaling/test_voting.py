"""Answer extraction, vote tallies, ASC's statistic, RPC's pruning: hand-computed cases, no engine."""

import math

import pytest

from plait.scaling.answers import answers_match, boxed, canonical, last_number
from plait.scaling.result import Sample
from plait.scaling.rpc import prune, rpc_tally
from plait.scaling.voting import Tally, leader_probability


def test_extraction_and_canonical_forms():
    assert last_number("so 12 + 3 = 15.") == "15"
    assert last_number("it costs 1,000.50 dollars") == "1000.5"
    assert last_number("no digits here") is None
    assert last_number("-7") == "-7"
    assert canonical("4/2") == "2" and canonical("1/3") == "1/3" and canonical("2.50") == "2.5"
    assert boxed(r"so \boxed{\frac{1}{2}} and more") == r"\frac{1}{2}"
    assert boxed(r"\boxed{12} then \boxed{13}") == "13"
    assert boxed("none") is None


def test_grading():
    assert answers_match("15", "15.0")
    assert not answers_match("15", "16")
    assert not answers_match(None, "1")
    pytest.importorskip("math_verify")
    assert answers_match(r"\frac{1}{2}", "0.5")


def test_tally_ties_go_to_the_earliest_answer():
    t = Tally()
    for a in ["7", "9", None, "9", "7"]:
        t.add(a)
    assert t.weights == {"7": 2.0, "9": 2.0}  # None votes for nothing
    assert t.leader() == "7" and t.top_two() == (2.0, 2.0)


def test_leader_probability_hand_computed():
    # P(Bin(v1+v2+1, 1/2) <= v1)
    assert leader_probability(0, 0) == 0.5
    assert leader_probability(1, 0) == 0.75
    assert leader_probability(3, 0) == 15 / 16
    assert leader_probability(4, 0) == 31 / 32
    assert leader_probability(5, 1) == (1 + 7 + 21 + 35 + 35 + 21) / 128


def _samples(spec):
    """spec: list of (answer, confidence) -> samples with distinct texts."""
    return [Sample(index=i, text=f"path {i}: {a}", answer=a, num_tokens=5, mean_logprob=math.log(c))
            for i, (a, c) in enumerate(spec)]


def test_rpc_equal_confidences_is_majority_vote():
    samples = _samples([("1", 0.5), ("2", 0.5), ("2", 0.5), ("3", 0.5)])
    tally, scored = rpc_tally(samples)
    assert tally.leader() == "2" and tally.weights["2"] == pytest.approx(1.0)
    assert all(s.score == pytest.approx(0.5) for s in scored)
    assert samples[0].score is None  # the caller's samples are not modified


def test_rpc_prunes_the_low_confidence_cluster():
    # 30 low-confidence paths say "7" (sum 30 x ~0.11 = 3.4), three confident paths say "9" (sum 2.73).
    # Without pruning "7" wins; the Weibull mixture puts the low cluster in its low component, below the mean,
    # so pruning removes it and "9" wins.
    spec = [("7", 0.10 + 0.001 * i) for i in range(30)] + [("9", 0.90), ("9", 0.91), ("9", 0.92)]
    keep = prune([c for _, c in spec])
    assert keep == [False] * 30 + [True] * 3
    assert rpc_tally(_samples(spec), pruning=False)[0].leader() == "7"
    tally, scored = rpc_tally(_samples(spec))
    assert tally.leader() == "9" and tally.weights == {"9": pytest.approx(2.73)}
    assert [s.score for s in scored[:30]] == [0.0] * 30


def test_rpc_counts_identical_completions_once():
    samples = [Sample(0, "x = 3", "3", 3, math.log(0.6)), Sample(1, "x = 3", "3", 3, math.log(0.6)),
               Sample(2, "y = 4", "4", 3, math.log(0.5)), Sample(3, "z = 4", "4", 3, math.log(0.5))]
    tally, _ = rpc_tally(samples, pruning=False)
    assert tally.weights == {"3": pytest.approx(0.6), "4": pytest.approx(1.0)}



def test_rpc_pruning_survives_a_very_sharp_component():
    # Few distinct values with many repeats (short answers: one text per answer) drive one component's shape to
    # its bound; z ** k then overflowed in the Weibull log-density. Values and counts from a real add1 question.
    counts = {0.118: 14, 0.216: 12, 0.126: 8, 0.072: 8, 0.053: 6, 0.055: 5, 0.103: 5, 0.023: 3, 0.038: 2, 0.007: 1}
    confidences = [c for c, k in counts.items() for _ in range(k)]
    keep = prune(confidences)  # raised OverflowError before
    mean = sum(confidences) / len(confidences)
    assert len(keep) == 64 and all(k for k, c in zip(keep, confidences) if c >= mean)  # never above the mean


def test_rpc_on_short_answers_ignores_how_often_an_answer_was_drawn():
    # The paper's (and its authors' code's) definition: an answer scores the sum of exp(mean logprob) over its
    # DISTINCT completions. When every answer has a single text (one-number answers), repeats add nothing, so
    # RPC picks the answer whose text the model finds most probable, however rarely it was drawn; SC counts.
    samples = [Sample(i, " 7", "7", 3, math.log(0.5)) for i in range(3)] + [Sample(3, " 8", "8", 3, math.log(0.6))]
    tally, _ = rpc_tally(samples, pruning=False)
    assert tally.weights == {"7": pytest.approx(0.5), "8": pytest.approx(0.6)} and tally.leader() == "8"
    assert majority_leader(samples) == "7"


def majority_leader(samples):
    t = Tally()
    for s in samples:
        t.add(s.answer)
    return t.leader()


def test_rpc_rows_without_pruning_are_named_apart():
    from plait.scaling.spec import parse_strategy

    assert parse_strategy("rpc:n=8").describe() == "rpc:n=8"
    assert parse_strategy("rpc:n=8,pruning=false").describe() == "rpc:n=8,pruning=false"
