"""The eval oracle: a reward that reads a task's answer key, for `--strategy bon:...,reward=oracle` (and pf, search).

Rewards are asked about the prompt they were solving, so the oracle finds the question by its prompt. A task with
a process verifier (`Task.verify`, e.g. the chain-sum step tasks) judges partial solutions step by step, which is
what particle filtering and step search need; otherwise only a final answer can be judged (1.0 when it matches the
reference, else 0.0), so partial solutions all score 0. Either way it is labelled "oracle" in every report: it
checks the mechanics of a search, not the merit of a reward a deployment could have.
"""

from __future__ import annotations

from typing import Any

from plait.scaling.answers import get_extractor
from plait.scaling.eval.tasks import Question, Task
from plait.scaling.rewards import Reward


def task_oracle(task: Task) -> Reward:
    by_prompt: dict[Any, Question] = {_key(q.prompt): q for q in task.questions}
    extract = get_extractor(task.extract)

    async def oracle(question: Any, text: str) -> float:
        q = by_prompt.get(_key(question))
        if q is None:
            raise ValueError("the oracle reward was asked about a prompt that is not one of the task's questions")
        if task.verify is not None:
            return float(task.verify(text, q))
        return 1.0 if task.is_correct(extract(text), q) else 0.0
    return oracle


def _key(prompt: Any) -> Any:
    return prompt if isinstance(prompt, str) else tuple(prompt)
