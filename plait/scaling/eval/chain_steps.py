"""Chain sums written one running-sum step per paragraph, with a process oracle that judges partial solutions.

A question adds `terms` one-digit numbers. The few-shot answers show one equation per step, steps separated by a
blank line (the step-wise strategies' default delimiter), and end with "The answer is N." (the task stops at the
period, or at "Q:" when the model moves on to a new question without an answer line):

    Q: What is 3 + 4 + 2?
    A: 3 + 4 = 7

    7 + 2 = 9

    The answer is 9.

Because every step is checkable, an oracle can score a partial solution, which a final-answer oracle cannot: that
is what particle filtering and step search need to be tested against best-of-N. `verify_steps` is that oracle. It
reads the question's terms (the answer key), so anything using it is labelled "oracle".
"""

from __future__ import annotations

import random
import re
from typing import Callable

from plait.scaling.answers import answer_is, answers_match

_EQUATION = re.compile(r"(-?\d+(?:\s*\+\s*-?\d+)+)\s*=\s*(-?\d+)")  # "a + b (+ c ...) = r"
_ANSWER_LINE = re.compile(r"answer is", re.IGNORECASE)
STOP = [".", "Q:"]  # the answer line ends at its period; "Q:" catches a model that skips it


def make_question(rng: random.Random, terms: int) -> list[int]:
    return [rng.randint(1, 9) for _ in range(terms)]


def question_text(nums: list[int]) -> str:
    return f"What is {' + '.join(map(str, nums))}?"


def worked_solution(nums: list[int]) -> str:
    """The reference solution, in the exact format of the few-shot examples (without the leading space)."""
    steps, total = [], nums[0]
    for x in nums[1:]:
        steps.append(f"{total} + {x} = {total + x}")
        total += x
    return "\n\n".join(steps + [f"The answer is {total}."])


def build_prompt(rng: random.Random, terms: int, shots: int) -> tuple[str, list[int]]:
    """(prompt, the question's terms). The shots are drawn first, then the question, from one seeded stream."""
    examples = [make_question(rng, terms) for _ in range(shots)]
    nums = make_question(rng, terms)
    prefix = "".join(f"Q: {question_text(e)}\nA: {worked_solution(e)}\n\n" for e in examples)
    return f"{prefix}Q: {question_text(nums)}\nA:", nums


def is_finished(text: str, delimiter: str = "\n\n") -> bool:
    """A partial solution of a step-wise strategy ends at a step boundary (or is empty); a finished sample ends
    anywhere else (best-of-N's samples stop at "." with the period cut off, so the text alone must tell)."""
    return bool(text.strip()) and not text.endswith(delimiter)


def verify_steps(nums: list[int], text: str, extract: Callable[[str], str | None] = answer_is) -> float:
    """The process oracle: a score in [0, 1] for a partial or complete solution.

    Each equation written so far is a check. It is right when its arithmetic is right and it follows the
    question's terms: every operand is a term of the question not used yet, or the result of an earlier right
    equation not used yet (a sound derivation, in any order: "3 + 4 = 7" then "7 + 2 = 9", or "4 + 2 = 6" then
    "6 + 3 = 9", or "3 + 4 + 2 = 9" at once). A wrong equation consumes nothing. A partial solution scores the
    fraction of right checks, 1.0 before any equation (nothing is wrong yet). A complete one (an answer line, the
    model moved on to "Q:", or text that does not end at a step boundary) scores 0 when its final answer is
    wrong, otherwise the fraction of right checks counting the answer as one more: a right answer always beats a
    wrong one, and a clean derivation beats a sloppy one.
    """
    body, moved_on, _ = text.partition("Q:")
    pool = list(nums)  # values an equation may still use: unused terms, then unused results
    checks = []
    for match in _EQUATION.finditer(body):
        operands = [int(x) for x in re.findall(r"-?\d+", match.group(1))]
        result = int(match.group(2))
        right = len(operands) >= 2 and sum(operands) == result and _take(pool, operands)
        if right:
            pool.append(result)
        checks.append(right)
    if not (moved_on or _ANSWER_LINE.search(body) or is_finished(text)):
        return sum(checks) / len(checks) if checks else 1.0
    if not answers_match(extract(body), str(sum(nums))):
        return 0.0
    return (sum(checks) + 1) / (len(checks) + 1)


def _take(pool: list[int], operands: list[int]) -> bool:
    """Remove `operands` from `pool` (a multiset) when all are there; otherwise leave it and return False."""
    left = list(pool)
    for x in operands:
        if x not in left:
            return False
        left.remove(x)
    pool[:] = left
    return True
