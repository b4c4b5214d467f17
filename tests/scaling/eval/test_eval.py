"""plait eval: tasks, drawing and storing samples on a tiny engine, replay through the CLI, report plot."""

import asyncio
import json

import pytest

from plait.cli import main
from plait.engine.async_llm import AsyncLLM
from plait.scaling.eval import run
from plait.scaling.eval.stats import bootstrap_interval
from plait.scaling.eval.tasks import load_task
from tests.helpers import wait_kv_free


def test_builtin_tasks_are_seeded_and_correct():
    a, b = load_task("add2", 5, seed=3), load_task("add2", 8, seed=3)
    assert [q.prompt for q in a.questions] == [q.prompt for q in b.questions[:5]]  # question i fixed for any N
    assert [q.prompt for q in load_task("add2", 5, seed=4).questions] != [q.prompt for q in a.questions]
    q = a.questions[0]
    x, y = q.prompt.rsplit("Q: What is ", 1)[1].split("?")[0].split(" + ")
    assert q.reference == str(int(x) + int(y)) and q.prompt.endswith("\nA:")
    sub = load_task("sub2", 20)
    assert all(int(q.reference) >= 0 for q in sub.questions)
    with pytest.raises(ValueError, match="task must be one of"):
        load_task("nope", 3)


def test_bootstrap_interval():
    low, high = bootstrap_interval([True] * 30 + [False] * 10)
    assert low < 0.75 < high and 0.5 < low and high < 0.95
    assert bootstrap_interval([True] * 5) == (1.0, 1.0)


def test_draw_save_replay_and_report(make_engine, tmp_path):
    engine = make_engine(AsyncLLM)
    task = load_task("add1", 3)
    params = run.task_params(task, temperature=1.0, max_tokens=6)
    stored = asyncio.run(run.draw_samples(engine, task, 8, params, seed=1))
    assert len(stored["questions"]) == 3 and all(len(q["samples"]) == 8 for q in stored["questions"])
    wait_kv_free(engine)
    # Make the stored answers meaningful for a hand check: question 0 all right, 1 mostly right, 2 all wrong.
    for qi, answers in enumerate([["2"] * 8, ["5", "1", "5", "5", "1", "5", "5", "5"], ["0"] * 8]):
        stored["questions"][qi]["reference"] = task.questions[qi].reference = ["2", "5", "9"][qi]
        for s, a in zip(stored["questions"][qi]["samples"], answers):
            s["answer"] = a
    path = tmp_path / "samples.json"
    run.save_samples(stored, str(path))
    rows = run.baselines(task, stored) + run.replay(task, stored, [])
    one = next(r for r in rows if r.strategy == "one sample")
    assert one.accuracy == pytest.approx((1 + 6 / 8 + 0) / 3)

    stored_task = json.loads(path.read_text())
    out = tmp_path / "out.json"
    # The CLI re-creates the task from its name: the prompts match, so the references come from the task.
    rc = main(["eval", "--task", "add1", "--num-questions", "3", "--replay", str(path), "--strategy", "sc:n=8",
               "--strategy", "asc:max=8", "--strategy", "blend:avg=4,max=8", "-o", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    names = [r["strategy"] for r in result["rows"]]
    assert names == ["greedy", "one sample", "sc:n=8", "asc:max=8", "blend:avg=4"]
    for r in result["rows"]:
        assert r["max_samples_used"] <= (r["budget"] or 8)
    blend = result["rows"][-1]
    assert blend["samples_per_question"] <= 4
    assert stored_task["questions"][0]["samples"][0]["answer"] == "2"

    plot = tmp_path / "plot.png"
    assert main(["eval", "report", str(out), "-o", str(plot)]) == 0
    assert plot.stat().st_size > 1000


def test_replay_refuses_a_budget_beyond_the_stored_samples(tmp_path):
    task = load_task("add1", 1)
    stored = {"task": "add1", "questions": [{"prompt": task.questions[0].prompt, "reference": "1",
                                            "greedy": {"text": "", "answer": None, "num_tokens": 1},
                                            "samples": [{"index": 0, "text": "1", "answer": "1", "num_tokens": 1}]}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(stored))
    assert main(["eval", "--task", "add1", "--num-questions", "1", "--replay", str(path),
                 "--strategy", "sc:n=4"]) == 2
    assert main(["eval", "--task", "add2", "--num-questions", "1", "--replay", str(path)]) == 2


def test_throughput_compares_shared_and_independent_samples(make_engine):
    from plait import SamplingParams
    from plait.scaling.eval.throughput import compare

    engine = make_engine(AsyncLLM)
    out = asyncio.run(compare(engine, ["a b c", "d e f"], 4, SamplingParams(max_tokens=5, ignore_eos=True)))
    assert out["independent"]["generated_tokens"] == out["self_consistency"]["generated_tokens"] == 2 * 4 * 5
    assert out["speedup"] > 0
    wait_kv_free(engine)


def test_reasoning_gym_tasks_use_their_own_scorer():
    pytest.importorskip("reasoning_gym")
    task = load_task("rg:basic_arithmetic", 3, seed=1)
    assert task.name == "rg:basic_arithmetic" and len(task.questions) == 3
    q = task.questions[0]
    assert task.is_correct(q.reference, q) and not task.is_correct(None, q)


def test_rows_average_numeric_details():
    from plait.scaling.result import ScalingResult

    task = load_task("add1", 2)
    results = [ScalingResult("pf", q.reference, "", [], 4, 4, 0, 10, 0.0,
                             details={"resamples": k, "steps": 3, "rule": "x", "done": True})
               for q, k in zip(task.questions, (1, 2))]
    row = run._row("pf", task, results, 0.0, 4)
    assert row.accuracy == 1.0 and row.details == {"resamples": 1.5, "steps": 3.0}  # text and bools left out
    assert "mean per question: resamples 1.50, steps 3.00" in run.format_table("add1", [row])
