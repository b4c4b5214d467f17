"""Pluggable rewards: `async def reward(question, text) -> float`, higher is better.

- `self_certainty(engine)`: the model's own mean log-probability of the text after the question (scoring call).
- `llm_judge(engine)`: P("Yes") from a verification prompt (scoring call, normalised against P("No")).
- `oracle(reference, extract)`: 1.0 when the text's answer matches the reference, else 0.0. It reads the answer
  key, so it is labelled "oracle" wherever reported: it checks the mechanics of a search, not its merit.
"""

from __future__ import annotations

import math
from typing import Any, Awaitable, Callable

from plait.scaling.answers import answers_match, get_extractor
from plait.scaling.scoring import score_continuation

Reward = Callable[[Any, str], Awaitable[float]]

JUDGE_TEMPLATE = "Question: {question}\nProposed answer: {answer}\nIs the proposed answer correct? Answer Yes or No.\n" \
                 "Answer:"


def self_certainty(engine: Any) -> Reward:
    async def reward(question: Any, text: str) -> float:
        if not text:
            return -math.inf
        return (await score_continuation(engine, question, text)).mean_logprob
    reward.__name__ = "self_certainty"
    return reward


def llm_judge(engine: Any, template: str = JUDGE_TEMPLATE) -> Reward:
    async def reward(question: Any, text: str) -> float:
        q = question if isinstance(question, str) else engine.tokenizer.decode(question)
        prompt = template.format(question=q, answer=text)
        yes = (await score_continuation(engine, prompt, " Yes")).logprob
        no = (await score_continuation(engine, prompt, " No")).logprob
        return 1 / (1 + math.exp(no - yes))
    reward.__name__ = "llm_judge"
    return reward


def oracle(reference: str, extract: Any = "last_number") -> Reward:
    fn = get_extractor(extract)

    async def reward(question: Any, text: str) -> float:
        return 1.0 if answers_match(fn(text), reference) else 0.0
    reward.__name__ = "oracle"
    return reward
