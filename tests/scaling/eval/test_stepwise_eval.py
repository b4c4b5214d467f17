"""Step-wise strategies through the eval runner's live path: particle filtering, step search and step routing
(calibrated on other questions of the task) each answer every question, and the route flags are checked."""

import pytest

from plait.cli import main
from plait.scaling.eval import run
from plait.scaling.eval.routing import prepare_routers
from plait.scaling.eval.tasks import load_task
from plait.scaling.spec import parse_strategy
from tests.helpers import wait_kv_free


def test_live_stepwise_strategies_and_a_calibrated_router(engines):
    small, large = engines
    task = load_task("add1", 3, seed=0)
    params = run.task_params(task, 1.0, 8)
    strategies = [parse_strategy(s, two_engines=True) for s in
                  ("pf:n=2,step_max_tokens=4", "search:k=2,tokens=40,step_max_tokens=4",
                   "route:rule=perplexity,quantile=0.5,step_max_tokens=4")]
    note = prepare_routers([strategies[2]], small, large, "add1", 2, 0, params)
    assert "calibrated on 2 questions" in note and strategies[2].threshold is not None
    rows = run.live(large, task, strategies, params, seed=0, concurrency=2)
    assert [r.num_questions for r in rows] == [3, 3, 3]
    assert rows[1].tokens_per_question <= 40  # the search's token budget per question
    per_model = rows[2].per_model  # the router's steps and tokens per model, averaged over questions
    assert set(per_model["tokens"]) == {"small", "large"} and rows[0].per_model == {}
    assert sum(per_model["tokens"].values()) <= rows[2].tokens_per_question + 1e-9
    assert "per question: small" in run.format_table("add1", rows)
    wait_kv_free(small)
    wait_kv_free(large)


def test_route_needs_a_small_model_and_is_not_a_one_engine_strategy():
    assert main(["eval", "--task", "add1", "--num-questions", "1", "--strategy", "route:rule=entropy"]) == 2
    with pytest.raises(ValueError, match="must be one of"):
        parse_strategy("route:rule=entropy")
