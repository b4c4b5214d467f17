"""The step-wise chain-sum task and its process oracle: hand-made solutions, seeded prompts, the reward flag."""

import asyncio

import pytest

from plait.scaling.eval.chain_steps import verify_steps, worked_solution
from plait.scaling.eval.oracle import task_oracle
from plait.scaling.eval.tasks import load_task
from plait.scaling.spec import parse_strategy

NUMS = [3, 4, 2]  # 3 + 4 = 7, 7 + 2 = 9


@pytest.mark.parametrize("text, score", [
    ("", 1.0),                                    # nothing written: nothing wrong yet
    (" 3 + 4 = 7\n\n", 1.0),                      # first step right
    (" 4 + 3 = 7\n\n", 1.0),                      # operands in either order
    (" 3 + 4 = 8\n\n", 0.0),                      # arithmetic wrong
    (" 3 + 5 = 8\n\n", 0.0),                      # right arithmetic, wrong term: does not follow the question
    (" 3 + 4 = 7\n\n7 + 3 = 10\n\n", 0.5),        # second step uses a term already used (there is one 3)
    (" 3 + 4 = 7\n\n3 + 4 = 7\n\n", 0.5),         # a repeated step: its terms are used up
    (" 3 + 3 = 6\n\n", 0.0),                      # one 3 in the question, used twice
    (" 3 + 4 = 7\n\n7 + 2 = 9\n\n", 1.0),
    (" 4 + 2 = 6\n\n6 + 3 = 9\n\n", 1.0),         # any order of a sound derivation
    (" 3 + 4 + 2 = 9\n\nThe answer is 9.", 1.0),  # all terms at once
    (" 3 + 4 + 2 = 10\n\n", 0.0),
    (" 3 + 4 = 7\n\n7 + 2 = 9\n\nThe answer is 9.", 1.0),         # complete, clean
    (" 3 + 4 = 7\n\n7 + 2 = 9\n\nThe answer is 9", 1.0),          # best-of-N's text: the stop "." cut off
    (" 3 + 4 = 7\n\n7 + 2 = 9\n\nThe answer is 10.", 0.0),        # wrong final answer: 0 whatever the steps
    (" 3 + 4 = 8\n\n8 + 1 = 9\n\nThe answer is 9.", 1 / 3),       # right answer, two wrong steps
    (" 3 + 4 = 7\n\n7 + 2 = 9\n\n9 + 1 = 10\n\nThe answer is 9.", 3 / 4),  # an extra step is a wrong one
    (" 3 + 4 = 7\n\n7 + 2 = 9\n\nQ:", 1.0),       # moved on without an answer line: judged on its last number
    (" 3 + 4 = 7", 0.0),                          # finished mid-way (not at a step boundary): answer 7 is wrong
])
def test_process_oracle_on_hand_made_solutions(text, score):
    assert verify_steps(NUMS, text) == pytest.approx(score)


def test_the_worked_solution_scores_full_marks():
    for nums in ([1, 2, 3], [9, 9, 9, 9], [5, 1]):
        assert verify_steps(nums, " " + worked_solution(nums)) == 1.0


def test_step_task_prompts_are_deterministic_per_seed():
    a, b = load_task("chain3_steps", 4, seed=2), load_task("chain3_steps", 7, seed=2)
    assert [q.prompt for q in a.questions] == [q.prompt for q in b.questions[:4]]  # question i: same for any N
    assert [q.prompt for q in load_task("chain3_steps", 4, seed=3).questions] != [q.prompt for q in a.questions]
    q = a.questions[0]
    assert q.reference == str(sum(q.meta["terms"])) and len(q.meta["terms"]) == 3
    assert q.prompt.endswith(f"Q: What is {' + '.join(map(str, q.meta['terms']))}?\nA:")
    assert q.prompt.count("The answer is") == 4 and "\n\n" in q.prompt  # 4 worked examples, steps by paragraph
    assert a.stop == [".", "Q:"] and a.extract == "answer_is" and a.verify is not None


def test_chain4_steps_is_the_same_family_with_four_terms():
    task = load_task("chain4_steps", 3, seed=1)
    assert task.stop == [".", "Q:"] and task.extract == "answer_is" and task.max_tokens == 64
    q = task.questions[2]
    nums = q.meta["terms"]
    assert len(nums) == 4 and q.reference == str(sum(nums))
    assert q.prompt.count("The answer is") == 4 and q.prompt.count(" = ") == 4 * 3  # 4 examples of 3 equations
    assert q.prompt != load_task("chain3_steps", 3, seed=1).questions[2].prompt  # its own seeded stream
    # the process oracle, through the task: two right steps score 1, a wrong third step 2 of 3; an answer line
    # that skips the last term is a wrong answer, 0 whatever its steps
    a, b, c, d = nums
    steps = f" {a} + {b} = {a + b}\n\n{a + b} + {c} = {a + b + c}\n\n"
    assert task.verify(steps, q) == 1.0
    assert task.verify(steps + f"{a + b + c} + {d} = {a + b + c + d + 1}\n\n", q) == pytest.approx(2 / 3)
    assert task.verify(" " + worked_solution(nums), q) == 1.0
    assert task.verify(f" {a} + {b} = {a + b}\n\n{a + b} + {c} = {a + b + c}\n\nThe answer is {a + b + c}.",
                       q) == 0.0
    assert asyncio.run(task_oracle(task)(q.prompt, " " + worked_solution(nums))) == 1.0


def test_the_eval_oracle_finds_the_question_by_its_prompt():
    task = load_task("chain3_steps", 3)
    oracle = task_oracle(task)
    q = task.questions[1]
    good = " " + worked_solution(q.meta["terms"])
    assert asyncio.run(oracle(q.prompt, good)) == 1.0
    with pytest.raises(ValueError, match="not one of the task's questions"):
        asyncio.run(oracle("another prompt", good))
    # a task without a process verifier: final answers only, partial solutions score 0
    add = load_task("add1", 2)
    final = task_oracle(add)
    assert asyncio.run(final(add.questions[0].prompt, f" {add.questions[0].reference}")) == 1.0
    assert asyncio.run(final(add.questions[0].prompt, " -1")) == 0.0


def test_reward_flag_picks_a_named_reward():
    task = load_task("chain3_steps", 1)
    rewards = {"oracle": task_oracle(task)}
    for text in ("bon:n=4,reward=oracle", "pf:n=4,reward=oracle,temperature=0.1", "search:k=2,reward=oracle"):
        s = parse_strategy(text, rewards=rewards)
        assert s.reward is rewards["oracle"] and "reward=oracle" in s.describe()
    assert parse_strategy("bon:n=4,reward=logprob", rewards=rewards).reward is None
    with pytest.raises(ValueError, match=r"reward must be one of \['logprob'\]"):
        parse_strategy("bon:n=4,reward=oracle")  # the server's table has no oracle
    with pytest.raises(ValueError, match="takes the parameters"):
        parse_strategy("sc:n=4,reward=oracle", rewards=rewards)
